//! Shards: a deterministic 1/N of the calibration images, so that N
//! machines capture statistics that `rba stats merge` adds up to the
//! one-shot capture (host/STATS.md, "Shards").
//!
//! The calibration set (after the held-out split and the `--samples`
//! subset) is cut into groups of [`super::group_images`] consecutive
//! images; group `g` belongs to shard `g mod N`. Groups are whole batches
//! and the unit in which rows are folded into the sums, so each image is
//! computed in the same batch and lands in the same f32 product chunks as
//! in a one-shot capture.

use std::fmt;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// What `--shard` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    /// `I/N`.
    Fixed(Shard),
    /// `auto`: from the scheduler's environment ([`Shard::from_env`]).
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("'{0}' is not a shard: expected I/N with 0 <= I < N (e.g. 2/8), or auto")]
    Syntax(String),
    #[error(
        "--shard auto found neither a Kubernetes Indexed Job (JOB_COMPLETION_INDEX) nor a Slurm array task \
         (SLURM_ARRAY_TASK_ID); give the shard as --shard I/N"
    )]
    NoScheduler,
    #[error(
        "--shard auto: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) gives this pod's index but not \
         the number of shards; Kubernetes does not export spec.completions: pass --shards N or set RBA_SHARDS \
         in the pod template"
    )]
    NoCount { index: usize },
    #[error("--shard auto: {var}={value} is not a non-negative integer")]
    Number { var: &'static str, value: String },
    #[error("--shard auto: {0}")]
    Inconsistent(String),
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The one shard of a one-shot capture.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::Syntax(format!("{index}/{count}")));
        }
        Ok(Shard { index, count })
    }

    /// The shard of this task of a Kubernetes Indexed Job or a Slurm job
    /// array, from its environment (`var` reads one variable; a pure
    /// function of the values, for tests):
    ///
    /// - Kubernetes: `JOB_COMPLETION_INDEX` is the index; the count is not
    ///   exported, so it comes from `shards` (`--shards N`) or `RBA_SHARDS`.
    /// - Slurm: `SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN` (0 when
    ///   unset) is the index, `SLURM_ARRAY_TASK_COUNT` the count; the ids
    ///   must be consecutive (`--array=0-7` or `1-8`, not `0-15:2` or lists
    ///   with gaps).
    ///
    /// `shards` (or `RBA_SHARDS`), when given, must agree with Slurm's count.
    pub fn from_env(var: impl Fn(&str) -> Option<String>, shards: Option<usize>) -> Result<Shard, ShardError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let number = |name: &'static str| -> Result<Option<usize>, ShardError> {
            match get(name) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| ShardError::Number { var: name, value: v }),
            }
        };
        let count = match shards {
            Some(n) => Some(n),
            None => number("RBA_SHARDS")?,
        };
        let k8s = number("JOB_COMPLETION_INDEX")?;
        let slurm = number("SLURM_ARRAY_TASK_ID")?;
        let shard = match (k8s, slurm) {
            (Some(_), Some(_)) => {
                return Err(ShardError::Inconsistent(
                    "both JOB_COMPLETION_INDEX (Kubernetes) and SLURM_ARRAY_TASK_ID (Slurm) are set; \
                     give the shard as --shard I/N"
                        .into(),
                ))
            }
            (None, None) => return Err(ShardError::NoScheduler),
            (Some(index), None) => {
                let count = count.ok_or(ShardError::NoCount { index })?;
                if index >= count {
                    return Err(ShardError::Inconsistent(format!(
                        "JOB_COMPLETION_INDEX={index} is not below the {count} shards given (--shards or RBA_SHARDS)"
                    )));
                }
                Shard { index, count }
            }
            (None, Some(id)) => {
                let task_count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                    ShardError::Inconsistent(format!(
                        "SLURM_ARRAY_TASK_ID={id} but SLURM_ARRAY_TASK_COUNT is not set (Slurm sets both in a job array)"
                    ))
                })?;
                let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                if let (Some(max), Some(_)) = (number("SLURM_ARRAY_TASK_MAX")?, get("SLURM_ARRAY_TASK_MIN")) {
                    if max < min || max - min + 1 != task_count {
                        return Err(ShardError::Inconsistent(format!(
                            "the array's task ids {min}..={max} are not {task_count} consecutive ids \
                             (a step or a list with gaps); submit with --array={min}-{} or give --shard I/N",
                            min + task_count.saturating_sub(1)
                        )));
                    }
                }
                if id < min || id - min >= task_count {
                    return Err(ShardError::Inconsistent(format!(
                        "SLURM_ARRAY_TASK_ID={id} is outside {min}..{} (SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)",
                        min + task_count
                    )));
                }
                if let Some(n) = count.filter(|&n| n != task_count) {
                    return Err(ShardError::Inconsistent(format!(
                        "--shards/RBA_SHARDS says {n} shards but the Slurm array has {task_count} tasks"
                    )));
                }
                Shard { index: id - min, count: task_count }
            }
        };
        if shard.count == 0 {
            return Err(ShardError::Syntax(format!("{}/0", shard.index)));
        }
        Ok(shard)
    }

    /// The positions (in the calibration set of `images` images) of this
    /// shard's images, ascending: group `g` (`group` consecutive images)
    /// belongs to shard `g mod count`.
    pub fn positions(&self, images: usize, group: usize) -> Vec<usize> {
        let group = group.max(1);
        let groups = images.div_ceil(group);
        (self.index..groups).step_by(self.count.max(1)).flat_map(|g| g * group..((g + 1) * group).min(images)).collect()
    }
}

impl std::str::FromStr for ShardSpec {
    type Err = ShardError;
    /// `auto` or `I/N`.
    fn from_str(s: &str) -> Result<Self, ShardError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ShardSpec::Auto);
        }
        let bad = || ShardError::Syntax(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if n == 0 || i >= n {
            return Err(bad());
        }
        Ok(ShardSpec::Fixed(Shard { index: i, count: n }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)], shards: Option<usize>) -> Result<Shard, ShardError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Shard::from_env(|k| map.get(k).cloned(), shards)
    }

    #[test]
    fn shard_specs_parse() {
        assert_eq!("2/8".parse(), Ok(ShardSpec::Fixed(Shard { index: 2, count: 8 })));
        assert_eq!(" 0 / 1 ".parse(), Ok(ShardSpec::Fixed(Shard::WHOLE)));
        assert_eq!("AUTO".parse::<ShardSpec>(), Ok(ShardSpec::Auto));
        for bad in ["8/8", "1/0", "-1/4", "2", "a/b", "2/4/8", ""] {
            let err = bad.parse::<ShardSpec>().unwrap_err();
            assert!(err.to_string().contains("expected I/N"), "{bad}: {err}");
        }
    }

    #[test]
    fn kubernetes_indexed_job_needs_the_count_from_a_flag_or_rba_shards() {
        assert_eq!(env(&[("JOB_COMPLETION_INDEX", "3")], Some(4)), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(env(&[("JOB_COMPLETION_INDEX", "0"), ("RBA_SHARDS", "4")], None), Ok(Shard { index: 0, count: 4 }));
        // The flag wins over the variable.
        assert_eq!(
            env(&[("JOB_COMPLETION_INDEX", "5"), ("RBA_SHARDS", "4")], Some(8)),
            Ok(Shard { index: 5, count: 8 })
        );
        let err = env(&[("JOB_COMPLETION_INDEX", "3")], None).unwrap_err();
        assert_eq!(err, ShardError::NoCount { index: 3 });
        assert!(err.to_string().contains("--shards N or set RBA_SHARDS"), "{err}");
        let err = env(&[("JOB_COMPLETION_INDEX", "4"), ("RBA_SHARDS", "4")], None).unwrap_err();
        assert!(err.to_string().contains("not below the 4 shards"), "{err}");
        let err = env(&[("JOB_COMPLETION_INDEX", "x")], Some(2)).unwrap_err();
        assert_eq!(err, ShardError::Number { var: "JOB_COMPLETION_INDEX", value: "x".into() });
    }

    #[test]
    fn slurm_array_ids_are_offset_by_their_minimum() {
        let zero = [("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")];
        assert_eq!(env(&zero, None), Ok(Shard { index: 2, count: 4 }));
        let one_based = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
        ];
        assert_eq!(env(&one_based, None), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(env(&one_based, Some(4)), Ok(Shard { index: 3, count: 4 }));
        let err = env(&one_based, Some(8)).unwrap_err();
        assert!(err.to_string().contains("says 8 shards but the Slurm array has 4 tasks"), "{err}");
        // --array=0-15:4: four tasks, ids 0, 4, 8, 12.
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "12"),
        ];
        let err = env(&stepped, None).unwrap_err();
        assert!(err.to_string().contains("not 4 consecutive ids"), "{err}");
        let err = env(&[("SLURM_ARRAY_TASK_ID", "2")], None).unwrap_err();
        assert!(err.to_string().contains("SLURM_ARRAY_TASK_COUNT is not set"), "{err}");
    }

    #[test]
    fn auto_without_a_scheduler_or_with_both_is_an_error() {
        let err = env(&[("RBA_SHARDS", "4")], None).unwrap_err();
        assert_eq!(err, ShardError::NoScheduler);
        assert!(err.to_string().contains("JOB_COMPLETION_INDEX") && err.to_string().contains("SLURM_ARRAY_TASK_ID"));
        let both = [("JOB_COMPLETION_INDEX", "0"), ("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "2")];
        assert!(env(&both, Some(2)).unwrap_err().to_string().contains("both"));
    }

    #[test]
    fn shards_partition_the_calibration_set_in_whole_groups() {
        for (images, group, count) in [(500, 128, 4), (500, 128, 3), (37, 8, 5), (10, 16, 3), (0, 4, 2), (96, 16, 6)] {
            let mut all: Vec<usize> =
                (0..count).flat_map(|i| Shard { index: i, count }.positions(images, group)).collect();
            all.sort_unstable();
            assert_eq!(all, (0..images).collect::<Vec<_>>(), "{images} images, group {group}, {count} shards");
            for i in 0..count {
                let p = Shard { index: i, count }.positions(images, group);
                // Every group is whole (the last one may be short) and starts on a group boundary.
                for run in p.chunk_by(|a, b| b == &(a + 1)) {
                    assert_eq!(run[0] % group, 0);
                    assert!(run.len() % group == 0 || run.last() == Some(&(images - 1)));
                }
            }
        }
        assert_eq!(Shard { index: 1, count: 2 }.positions(10, 3), vec![3, 4, 5, 9]);
        assert_eq!(Shard::WHOLE.positions(5, 2), vec![0, 1, 2, 3, 4]);
    }
}

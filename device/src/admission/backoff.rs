//! Per-peer backoff after failed authentications: after a few free
//! failures, an address waits `initial`, doubling with each further
//! failure up to `max`; a success from it forgets it. The table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How failed authentications from one address are answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failed authentications an address may have before backoff starts
    /// (a mistyped key, a host that refused a replaced board).
    pub free_failures: u32,
    /// The first backoff.
    pub initial: Duration,
    /// The longest backoff; also how long an address stays remembered
    /// after its backoff ended without another failure.
    pub max: Duration,
    /// Addresses remembered at most (0: no backoff at all).
    pub max_peers: usize,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            free_failures: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_peers: 1024,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Failures since the last success (or since it was remembered).
    failures: u32,
    /// Refused until then.
    until: Instant,
}

impl Entry {
    /// When the entry may be forgotten: `max` after its backoff ended.
    fn expires(&self, max: Duration) -> Instant {
        self.until + max
    }
}

/// The key an address is remembered under: IPv4 addresses (also when
/// mapped into IPv6) as they are, IPv6 addresses by their /64 prefix (one
/// host on a LAN commonly holds a whole /64).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// The addresses that failed recently.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    peers: HashMap<IpAddr, Entry>,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff { policy, peers: HashMap::new() }
    }

    /// How much longer connections from `ip` are refused, if they are.
    pub fn refused(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let e = self.peers.get(&peer_key(ip))?;
        (e.until > now).then(|| e.until - now)
    }

    /// Records a failed authentication from `ip`; returns its failures in a
    /// row and the backoff it starts now (`None` while failures are free).
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> (u32, Option<Duration>) {
        if self.policy.max_peers == 0 {
            return (0, None);
        }
        let key = peer_key(ip);
        if !self.peers.contains_key(&key) && self.peers.len() >= self.policy.max_peers {
            self.make_room(now);
        }
        let e = self.peers.entry(key).or_insert(Entry { failures: 0, until: now });
        e.failures = e.failures.saturating_add(1);
        let over = e.failures.saturating_sub(self.policy.free_failures);
        let delay = (over > 0).then(|| {
            let doublings = (over - 1).min(31);
            self.policy.initial.saturating_mul(1u32 << doublings).min(self.policy.max)
        });
        e.until = now + delay.unwrap_or_default();
        (e.failures, delay)
    }

    /// A host from `ip` proved the key: its failures are forgotten.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.peers.remove(&peer_key(ip));
    }

    /// Forgets addresses whose backoff ended `max` ago without a new failure.
    pub fn sweep(&mut self, now: Instant) {
        let max = self.policy.max;
        self.peers.retain(|_, e| e.expires(max) > now);
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The table is full: forget what may be forgotten, else the address
    /// whose backoff ends first (the least suspicious).
    fn make_room(&mut self, now: Instant) {
        self.sweep(now);
        if self.peers.len() < self.policy.max_peers {
            return;
        }
        if let Some(key) = self.peers.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k) {
            self.peers.remove(&key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn policy() -> BackoffPolicy {
        BackoffPolicy { free_failures: 2, initial: Duration::from_secs(1), max: Duration::from_secs(8), max_peers: 4 }
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn free_failures_then_doubling_up_to_the_maximum() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        let delays: Vec<Option<u64>> = (0..8).map(|_| b.failed(v4(1), t).1.map(|d| d.as_secs())).collect();
        assert_eq!(delays, [None, None, Some(1), Some(2), Some(4), Some(8), Some(8), Some(8)]);
        assert_eq!(b.refused(v4(1), t), Some(Duration::from_secs(8)));
        assert_eq!(b.refused(v4(1), t + Duration::from_secs(8)), None);
        assert_eq!(b.refused(v4(2), t), None, "another address");
        // A success forgets the failures.
        b.succeeded(v4(1));
        assert_eq!(b.refused(v4(1), t), None);
        assert_eq!(b.failed(v4(1), t), (1, None));
    }

    #[test]
    fn quiet_addresses_are_forgotten_and_the_table_is_bounded() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        for _ in 0..3 {
            b.failed(v4(1), t);
        }
        b.sweep(t + Duration::from_secs(8));
        assert_eq!(b.len(), 1, "still remembered");
        b.sweep(t + Duration::from_secs(10));
        assert!(b.is_empty(), "forgotten max after the backoff ended");
        // Many addresses: never more than max_peers; the address backing
        // off longest is kept.
        for _ in 0..5 {
            b.failed(v4(200), t);
        }
        for i in 0..100 {
            b.failed(v4(i), t);
            assert!(b.len() <= 4);
        }
        assert!(b.refused(v4(200), t).is_some());
        // No table, no backoff.
        let mut none = Backoff::new(BackoffPolicy { max_peers: 0, ..policy() });
        for _ in 0..10 {
            assert_eq!(none.failed(v4(1), t).1, None);
        }
        assert!(none.is_empty());
    }

    #[test]
    fn ipv6_peers_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 168, 1, 9).to_ipv6_mapped());
        assert_eq!(peer_key(mapped), IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)));
        assert_eq!(peer_key(IpAddr::V6(Ipv6Addr::LOCALHOST)), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
}

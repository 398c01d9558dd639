//! Proptest strategies for every message type (shared by the test files).
#![allow(dead_code)]

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use rba_protocol::*;

pub fn s() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._ -]{0,12}"
}

fn f() -> impl Strategy<Value = f64> {
    -1e12f64..1e12
}

fn f32s() -> impl Strategy<Value = f32> {
    -1e6f32..1e6
}

fn digest() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn kind() -> impl Strategy<Value = ArtifactKind> {
    prop_oneof![Just(ArtifactKind::Model), Just(ArtifactKind::EvalBundle)]
}

fn identity() -> impl Strategy<Value = DeviceIdentity> {
    (s(), s(), s(), any::<u32>(), any::<u64>(), s(), s(), s()).prop_map(
        |(board, arch, os, cores, memory_bytes, runtime, rba_version, hostname)| DeviceIdentity {
            board,
            arch,
            os,
            cores,
            memory_bytes,
            runtime,
            rba_version,
            hostname,
        },
    )
}

fn throttling() -> impl Strategy<Value = Throttling> {
    (any::<bool>(), any::<bool>(), any::<bool>(), option::of(any::<u32>())).prop_map(
        |(throttled, under_voltage, soft_temp_limit, raw)| Throttling {
            throttled,
            under_voltage,
            soft_temp_limit,
            raw,
        },
    )
}

fn stats() -> impl Strategy<Value = LatencyStats> {
    (any::<[u64; 7]>(), f(), f(), f(), any::<bool>()).prop_map(|(v, mean_ns, std_ns, cv, unstable)| LatencyStats {
        count: v[0],
        min_ns: v[1],
        p50_ns: v[2],
        p90_ns: v[3],
        p95_ns: v[4],
        p99_ns: v[5],
        max_ns: v[6],
        mean_ns,
        std_ns,
        cv,
        unstable,
    })
}

fn policy() -> impl Strategy<Value = RunPolicy> {
    (any::<u32>(), any::<u32>()).prop_map(|(count, min_time_ms)| RunPolicy { count, min_time_ms })
}

fn ep() -> impl Strategy<Value = ExecutionProvider> {
    prop_oneof![
        Just(ExecutionProvider::Cpu),
        Just(ExecutionProvider::Xnnpack),
        Just(ExecutionProvider::Cuda),
        Just(ExecutionProvider::TensorRt),
    ]
}

fn ep_policy() -> impl Strategy<Value = EpPolicy> {
    prop_oneof![Just(EpPolicy::Fallback), Just(EpPolicy::Strict)]
}

fn runtime_kind() -> impl Strategy<Value = RuntimeKind> {
    prop_oneof![Just(RuntimeKind::Tract), Just(RuntimeKind::OnnxRuntime)]
}

fn runtime_request() -> impl Strategy<Value = RuntimeRequest> {
    (runtime_kind(), vec(ep(), 0..4), option::of(ep_policy())).prop_map(|(runtime, eps, policy)| RuntimeRequest {
        runtime,
        eps,
        policy,
    })
}

fn runtime_report() -> impl Strategy<Value = RuntimeReport> {
    let outcome =
        (s(), vec((s(), s()), 0..3), option::of(s())).prop_map(|(ep, options, error)| EpOutcome { ep, options, error });
    let nodes = (s(), any::<u32>()).prop_map(|(provider, nodes)| ProviderNodes { provider, nodes });
    let cache = (any::<u32>(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
        |(engines_before, engines_after, hit, timing_cache)| EngineCache {
            engines_before,
            engines_after,
            hit,
            timing_cache,
        },
    );
    (
        (runtime_kind(), s(), option::of(s()), ep_policy()),
        (vec(outcome, 0..3), vec(nodes, 0..3)),
        (any::<u64>(), any::<u64>(), option::of(cache), vec(s(), 0..2)),
    )
        .prop_map(
            |((runtime, version, library, policy), (eps, nodes), (session_ns, first_run_ns, engine_cache, notes))| {
                RuntimeReport {
                    runtime,
                    version,
                    library,
                    policy,
                    eps,
                    nodes,
                    session_ns,
                    first_run_ns,
                    engine_cache,
                    notes,
                }
            },
        )
}

fn runtime_info() -> impl Strategy<Value = RuntimeInfo> {
    (runtime_kind(), (option::of(s()), option::of(s()), option::of(s())), vec(s(), 0..3), vec(ep(), 0..3), ep_policy())
        .prop_map(|(runtime, (version, library, problem), providers, default_eps, default_policy)| RuntimeInfo {
            runtime,
            version,
            library,
            problem,
            providers,
            default_eps,
            default_policy,
        })
}

fn accelerator() -> impl Strategy<Value = AcceleratorInfo> {
    (option::of(s()), option::of(s()), option::of(any::<u64>()), option::of(any::<u64>()), option::of(f32s())).prop_map(
        |(model, power_mode, gpu_freq_hz, gpu_max_freq_hz, gpu_load_pct)| AcceleratorInfo {
            model,
            power_mode,
            gpu_freq_hz,
            gpu_max_freq_hz,
            gpu_load_pct,
        },
    )
}

fn bench_result() -> impl Strategy<Value = BenchmarkResult> {
    (
        (s(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()),
        vec(any::<u64>(), 0..40),
        stats(),
        (option::of(any::<u64>()), option::of(f32s()), option::of(f32s()), option::of(throttling())),
        runtime_report(),
    )
        .prop_map(
            |(
                (model, threads, load_time_ns, first_run_ns, warmup_runs),
                samples_ns,
                stats,
                (peak_rss_bytes, t0, t1, throttling),
                runtime,
            )| {
                BenchmarkResult {
                    model,
                    threads,
                    load_time_ns,
                    first_run_ns,
                    warmup_runs,
                    samples_ns,
                    stats,
                    peak_rss_bytes,
                    cpu_temp_start_c: t0,
                    cpu_temp_end_c: t1,
                    throttling,
                    runtime,
                }
            },
        )
}

pub fn remote_error() -> impl Strategy<Value = RemoteError> {
    prop_oneof![
        (any::<u16>(), any::<u16>())
            .prop_map(|(supported, requested)| RemoteError::VersionMismatch { supported, requested }),
        Just(RemoteError::AuthRequired),
        Just(RemoteError::AuthFailed),
        Just(RemoteError::HandshakeRequired),
        s().prop_map(RemoteError::BadRequest),
        s().prop_map(RemoteError::InvalidName),
        s().prop_map(RemoteError::NotFound),
        Just(RemoteError::NoUpload),
        (any::<u64>(), any::<u64>()).prop_map(|(expected, got)| RemoteError::OffsetMismatch { expected, got }),
        (any::<u32>(), any::<u32>()).prop_map(|(max, got)| RemoteError::ChunkTooLarge { max, got }),
        (any::<u64>(), any::<u64>()).prop_map(|(size, end)| RemoteError::ChunkBeyondSize { size, end }),
        (any::<u64>(), any::<u64>()).prop_map(|(received, size)| RemoteError::Incomplete { received, size }),
        (digest(), digest()).prop_map(|(expected, actual)| RemoteError::ShaMismatch { expected, actual }),
        (any::<u64>(), any::<u64>()).prop_map(|(size, max)| RemoteError::TooLarge { size, max }),
        Just(RemoteError::Busy),
        Just(RemoteError::Cancelled),
        s().prop_map(RemoteError::Storage),
        s().prop_map(RemoteError::Runtime),
        s().prop_map(RemoteError::Unsupported),
        s().prop_map(RemoteError::Internal),
    ]
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), s(), s(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(protocol_version, client, rba_version, caps, max_frame, preferred_chunk)| Request::Hello(Hello {
                protocol_version,
                client,
                rba_version,
                capabilities: Capabilities(caps),
                max_frame,
                preferred_chunk,
            })
        ),
        Just(Request::DeviceInfo),
        (kind(), s(), any::<u64>(), digest())
            .prop_map(|(kind, name, size, sha256)| Request::UploadBegin(UploadBegin { kind, name, size, sha256 })),
        (any::<u64>(), vec(any::<u8>(), 0..300))
            .prop_map(|(offset, d)| Request::UploadChunk(UploadChunk { offset, data: Bytes(d) })),
        (kind(), s(), digest()).prop_map(|(kind, name, sha256)| Request::UploadCommit(UploadCommit {
            kind,
            name,
            sha256
        })),
        Just(Request::UploadAbort),
        option::of(kind()).prop_map(|kind| Request::List { kind }),
        (kind(), s()).prop_map(|(kind, name)| Request::Delete { kind, name }),
        (s(), option::of(any::<u32>()), policy(), policy(), option::of(s()), option::of(runtime_request())).prop_map(
            |(model, threads, warmup, runs, input_bundle, runtime)| {
                Request::Benchmark(BenchmarkRequest { model, threads, warmup, runs, input_bundle, runtime })
            }
        ),
        (s(), s(), option::of(any::<u32>()), option::of(runtime_request())).prop_map(
            |(model, bundle, threads, runtime)| Request::Evaluate(EvalRequest { model, bundle, threads, runtime })
        ),
        (
            (s(), s(), option::of(any::<u32>())),
            (policy(), policy(), option::of(s())),
            (option::of(runtime_request()), option::of(runtime_request()))
        )
            .prop_map(|((model_a, model_b, threads), (warmup, runs, input_bundle), (runtime_a, runtime_b))| {
                Request::Compare(CompareRequest {
                    model_a,
                    model_b,
                    threads,
                    warmup,
                    runs,
                    input_bundle,
                    runtime_a,
                    runtime_b,
                })
            }),
        any::<u32>().prop_map(|target| Request::Cancel { target }),
        any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
        (
            (s(), s(), digest(), vec(gate(), 0..4)),
            (option::of(s()), option::of(any::<u32>()), policy(), policy(), option::of(runtime_request()))
        )
            .prop_map(|((app, model, sha256, gates), (eval_bundle, threads, warmup, runs, runtime))| {
                Request::Activate(ActivateRequest {
                    app,
                    model,
                    sha256,
                    gates,
                    eval_bundle,
                    threads,
                    warmup,
                    runs,
                    runtime,
                })
            }),
        (option::of(s()), any::<u32>()).prop_map(|(app, history)| Request::AppStatus { app, history }),
        (s(), option::of(any::<u64>()))
            .prop_map(|(app, from_generation)| Request::Rollback(RollbackRequest { app, from_generation })),
    ]
}

pub fn gate() -> impl Strategy<Value = Gate> {
    let metric = prop::sample::select(GateMetric::ALL.to_vec());
    let op = prop_oneof![Just(GateOp::Ge), Just(GateOp::Le), Just(GateOp::Gt), Just(GateOp::Lt)];
    let unit =
        prop_oneof![Just(GateUnit::Percent), Just(GateUnit::Millis), Just(GateUnit::Micros), Just(GateUnit::Mib)];
    (metric, op, 0f64..1e6, unit).prop_map(|(metric, op, threshold, unit)| Gate { metric, op, threshold, unit })
}

fn figures() -> impl Strategy<Value = GateFigures> {
    (
        option::of(any::<u32>()),
        option::of(0f64..1.0),
        option::of(0f64..1.0),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(f()),
        option::of(any::<u64>()),
    )
        .prop_map(|(samples, top1, agreement, p50_ns, p90_ns, p99_ns, mean_ns, peak_rss_bytes)| GateFigures {
            samples,
            top1,
            agreement,
            p50_ns,
            p90_ns,
            p99_ns,
            mean_ns,
            peak_rss_bytes,
        })
}

fn check() -> impl Strategy<Value = GateCheck> {
    (gate(), option::of(f()), any::<bool>()).prop_map(|(gate, measured, passed)| GateCheck { gate, measured, passed })
}

fn history_event() -> impl Strategy<Value = HistoryEvent> {
    prop_oneof![Just(HistoryEvent::Activated), Just(HistoryEvent::GateFailed), Just(HistoryEvent::RolledBack)]
}

fn hook() -> impl Strategy<Value = HookOutcome> {
    (
        vec(s(), 0..3),
        option::of(any::<i32>()),
        option::of(any::<i32>()),
        any::<bool>(),
        option::of(s()),
        any::<u64>(),
        s(),
    )
        .prop_map(|(command, exit_code, signal, timed_out, error, duration_ms, output)| HookOutcome {
            command,
            exit_code,
            signal,
            timed_out,
            error,
            duration_ms,
            output,
        })
}

pub fn active_model() -> impl Strategy<Value = ActiveModel> {
    (
        (any::<u64>(), s(), digest(), any::<u64>(), any::<u64>(), history_event()),
        (option::of(any::<u64>()), option::of(any::<u64>()), vec(check(), 0..3), figures(), option::of(s())),
    )
        .prop_map(
            |(
                (generation, model, sha256, size, activated_at_ms, event),
                (previous_generation, rolled_back_from, checks, figures, bundle),
            )| ActiveModel {
                generation,
                model,
                sha256,
                size,
                activated_at_ms,
                event,
                previous_generation,
                rolled_back_from,
                checks,
                figures,
                bundle,
            },
        )
}

pub fn history_entry() -> impl Strategy<Value = HistoryEntry> {
    (
        (any::<u64>(), any::<u64>(), history_event(), option::of(any::<u64>()), s(), digest()),
        (vec(check(), 0..3), figures(), option::of(hook()), any::<bool>()),
    )
        .prop_map(|((seq, at_ms, event, generation, model, sha256), (checks, figures, hook, recovered))| {
            HistoryEntry { seq, at_ms, event, generation, model, sha256, checks, figures, hook, recovered }
        })
}

fn outcome() -> impl Strategy<Value = ActivationOutcome> {
    prop_oneof![
        Just(ActivationOutcome::Activated),
        Just(ActivationOutcome::AlreadyActive),
        Just(ActivationOutcome::GateFailed),
        Just(ActivationOutcome::RolledBack),
        Just(ActivationOutcome::AlreadyRolledBack),
    ]
}

pub fn activation_result() -> impl Strategy<Value = ActivationResult> {
    (
        (s(), outcome(), option::of(active_model()), option::of(active_model())),
        (vec(check(), 0..3), figures(), option::of(hook())),
    )
        .prop_map(|((app, outcome, active, replaced), (checks, figures, hook))| ActivationResult {
            app,
            outcome,
            active,
            replaced,
            checks,
            figures,
            evaluation: None,
            benchmark: None,
            hook,
        })
}

pub fn app_status() -> impl Strategy<Value = AppStatus> {
    (s(), option::of(active_model()), vec(active_model(), 0..2), vec(history_entry(), 0..3), any::<u64>()).prop_map(
        |(app, active, previous, history, history_total)| AppStatus { app, active, previous, history, history_total },
    )
}

fn artifact() -> impl Strategy<Value = ArtifactInfo> {
    (kind(), s(), any::<u64>(), digest()).prop_map(|(kind, name, size, sha256)| ArtifactInfo {
        kind,
        name,
        size,
        sha256,
    })
}

pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u16>(), identity(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(protocol_version, device, caps, max_frame, chunk_size, max_upload)| {
                Response::Welcome(Welcome {
                    protocol_version,
                    device,
                    capabilities: Capabilities(caps),
                    max_frame,
                    chunk_size,
                    max_upload,
                })
            }
        ),
        (
            identity(),
            any::<u64>(),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(f32s()),
            option::of(throttling()),
            any::<u32>(),
            (vec(runtime_info(), 0..3), option::of(accelerator()))
        )
            .prop_map(
                |(
                    identity,
                    uptime_s,
                    free_storage_bytes,
                    available_memory_bytes,
                    cpu_temp_c,
                    throttling,
                    artifacts,
                    (runtimes, accelerator),
                )| Response::DeviceInfo(DeviceInfo {
                    identity,
                    uptime_s,
                    free_storage_bytes,
                    available_memory_bytes,
                    cpu_temp_c,
                    throttling,
                    artifacts,
                    runtimes,
                    accelerator,
                })
            ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(resume_offset, chunk_size)| Response::UploadReady { resume_offset, chunk_size }),
        any::<u64>().prop_map(|next_offset| Response::ChunkAck { next_offset }),
        artifact().prop_map(Response::Committed),
        Just(Response::Aborted),
        vec(artifact(), 0..5).prop_map(Response::Artifacts),
        Just(Response::Deleted),
        bench_result().prop_map(Response::Benchmark),
        (
            s(),
            s(),
            any::<u32>(),
            option::of(f()),
            option::of(f()),
            option::of(f32s()),
            option::of(f()),
            option::of(stats()),
            option::of(any::<u64>()),
            runtime_report()
        )
            .prop_map(
                |(
                    model,
                    bundle,
                    samples,
                    top1_accuracy,
                    top1_agreement,
                    max_abs_diff,
                    mean_cosine,
                    latency,
                    peak_rss_bytes,
                    runtime,
                )| {
                    Response::Evaluation(EvalResult {
                        model,
                        bundle,
                        samples,
                        top1_accuracy,
                        top1_agreement,
                        max_abs_diff,
                        mean_cosine,
                        latency,
                        peak_rss_bytes,
                        runtime,
                    })
                }
            ),
        (bench_result(), bench_result(), f()).prop_map(|(a, b, ratio_of_medians)| Response::Compare(CompareResult {
            a,
            b,
            ratio_of_medians
        })),
        any::<bool>().prop_map(|was_running| Response::CancelAck { was_running }),
        any::<u64>().prop_map(|nonce| Response::Pong { nonce }),
        remote_error().prop_map(Response::Error),
        activation_result().prop_map(|a| Response::Activation(Box::new(a))),
        vec(app_status(), 0..3).prop_map(Response::Apps),
    ]
}

pub fn progress() -> impl Strategy<Value = Progress> {
    let phase = prop_oneof![
        Just(Phase::Started),
        Just(Phase::Loading),
        Just(Phase::WarmUp),
        Just(Phase::Measuring),
        Just(Phase::Evaluating),
        Just(Phase::Activating)
    ];
    (phase, any::<u64>(), option::of(any::<u64>()), option::of(s()))
        .prop_map(|(phase, done, total, message)| Progress { phase, done, total, message })
}

pub fn envelope() -> impl Strategy<Value = Envelope> {
    let msg = prop_oneof![
        request().prop_map(Message::Request),
        response().prop_map(Message::Response),
        progress().prop_map(Message::Progress),
    ];
    (any::<u32>(), msg).prop_map(|(id, msg)| Envelope { id, msg })
}

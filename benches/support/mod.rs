//! Helpers shared by the benchmarks and the measuring examples: flags, medians, peak memory.
#![allow(dead_code)]

use std::time::Duration;

/// The value of `--name N` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The process's peak resident set (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `d` with time compressed by `speedup`: every interval divided, every budget multiplied, so
/// that calls per simulated minute are what a real process would make.
pub fn scaled(d: mfbatch::track::TrackerConfig, speedup: u32) -> mfbatch::track::TrackerConfig {
    let s = f64::from(speedup);
    mfbatch::track::TrackerConfig {
        batch_calls_per_second: d.batch_calls_per_second * s,
        logs_calls_per_second: d.logs_calls_per_second * s,
        filter_calls_per_second: d.filter_calls_per_second * s,
        poll_min: d.poll_min / speedup,
        poll_max: d.poll_max / speedup,
        log_min_interval: d.log_min_interval / speedup,
        log_max_interval: d.log_max_interval / speedup,
        drain_quiet: d.drain_quiet / speedup,
        drain_max: d.drain_max / speedup,
        not_found_grace: d.not_found_grace / speedup,
        sweep_interval: d.sweep_interval / speedup,
        sweep_overlap: d.sweep_overlap / speedup,
        latency_target: d.latency_target / speedup,
        status_failure_warning: d.status_failure_warning / speedup,
        status_failure_limit: d.status_failure_limit / speedup,
        runnable_warning: d.runnable_warning / speedup,
        ..d
    }
}

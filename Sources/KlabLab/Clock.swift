import CKlabLinux
import Foundation

/// The clocks klab relates: CLOCK_MONOTONIC (bpf_ktime_get_ns, TUN stamps), CLOCK_REALTIME
/// (pcap stamps) and the TSC (cycles).
public enum Clock {
    @inline(__always)
    public static func monotonicNs() -> UInt64 { now(CLOCK_MONOTONIC) }
    public static func realtimeNs() -> UInt64 { now(CLOCK_REALTIME) }
    /// CPU time of the calling thread: unlike wall time, not inflated by other tasks' turns.
    public static func threadCPUNs() -> UInt64 { now(CLOCK_THREAD_CPUTIME_ID) }

    @inline(__always)
    static func now(_ id: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(id, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// realtime − monotonic in ns, from the tightest of many bracketed readings.
    public static func realtimeOffsetNs() -> Int64 {
        var best = (width: UInt64.max, offset: Int64(0))
        for _ in 0..<64 {
            let a = monotonicNs()
            let r = realtimeNs()
            let b = monotonicNs()
            if b - a < best.width { best = (b - a, Int64(r) - Int64(a + (b - a) / 2)) }
        }
        return best.offset
    }

    /// /proc/cpuinfo's first "model name": whose cycles the TSC counts.
    public static var cpuModel: String? {
        let text = (try? KernelFile.text("/proc/cpuinfo")) ?? ""
        return text.split(separator: "\n").first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces) }
    }

    /// TSC ticks per second, measured against CLOCK_MONOTONIC over `ms` milliseconds.
    public static func tscHz(ms: UInt32 = 50) -> Double {
        let t0 = klab_rdtsc(), n0 = monotonicNs()
        usleep(ms * 1000)
        let t1 = klab_rdtsc(), n1 = monotonicNs()
        return Double(t1 &- t0) / (Double(n1 - n0) / 1e9)
    }
}

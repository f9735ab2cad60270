import Foundation
import NIOCore

/// How many event loops `dallage serve` runs: one per CPU the process may run on.
///
/// NIO sizes its shared event loops by the machine's cores and the cgroup's quota or cpuset, not
/// by the process's CPU affinity (`taskset`, systemd's `CPUAffinity=`, `numactl`). Confined to
/// fewer CPUs than the machine has, a server would run more loops than CPUs, and two loops on one
/// core take turns: a connection waits while the other loop's batch runs (`bench/server`, server
/// on one core: p99 6.0–6.1 ms with two loops, 4.3–4.5 ms with one, at the same requests/s).
public enum EventLoopCount {
    /// The CPUs this process may run on, from `Cpus_allowed` in `/proc/self/status` (a hex mask
    /// in comma-separated words), or nil where that is not readable.
    public static func allowedCPUs(status: String? = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8))
        -> Int?
    {
        guard let line = status?.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") }) else {
            return nil
        }
        var count = 0
        for c in line.dropFirst("Cpus_allowed:".count) where c != "," && !c.isWhitespace {
            guard let digit = c.hexDigitValue else { return nil }
            count += digit.nonzeroBitCount
        }
        return count > 0 ? count : nil
    }

    /// The loop count for this process: `NIO_SINGLETON_GROUP_LOOP_COUNT` when set (NIO's own
    /// setting), else the fewer of NIO's count and the CPUs allowed.
    public static func forThisProcess(
        environment: [String: String] = ProcessInfo.processInfo.environment, allowed: Int? = allowedCPUs()
    ) -> Int {
        if let set = environment["NIO_SINGLETON_GROUP_LOOP_COUNT"].flatMap(Int.init), set > 0 { return set }
        return max(1, min(System.coreCount, allowed ?? System.coreCount))
    }

    /// Sizes NIO's shared event loops (used by the server, the database pool and the HTTP
    /// client) to ``forThisProcess``. Called once, first thing in `dallage serve`, before any of
    /// them starts; returns the count, for the start-up log line.
    public static func adopt() -> Int {
        let count = forThisProcess()
        if ProcessInfo.processInfo.environment["NIO_SINGLETON_GROUP_LOOP_COUNT"] == nil {
            NIOSingletons.groupLoopCountSuggestion = count
        }
        return count
    }
}

import Foundation
import NIOCore

/// How many event loops `dallage serve` runs: one per CPU the process may run on.
///
/// NIO sizes its shared event loops by the machine's cores and the cgroup's quota or cpuset, not
/// by the process's CPU affinity (`taskset`, systemd's `CPUAffinity=`, `numactl`). Confined to
/// fewer CPUs than the machine has, a server would run more loops than CPUs, and two loops on one
/// core take turns: a connection waits while the other loop's batch runs (20 KB tiles, the server
/// on one core and wrk on the other: p99 6.0–6.1 ms with two loops, 4.3–4.5 ms with one, at the
/// same requests/s).
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

    /// The loop count for this process: `NIO_SINGLETON_GROUP_LOOP_COUNT` when it is a count (NIO's
    /// own setting), else the fewer of NIO's count and the CPUs allowed.
    public static func forThisProcess(
        environment: [String: String] = ProcessInfo.processInfo.environment, allowed: Int? = allowedCPUs()
    ) -> Int {
        nioSetting(environment) ?? max(1, min(System.coreCount, allowed ?? System.coreCount))
    }

    /// Sizes NIO's shared event loops (used by the server, the database pool and the HTTP
    /// client) to ``forThisProcess``. Called once, first thing in `dallage serve`, before any of
    /// them starts; returns the count, for the start-up log line. A variable that is not a count
    /// (which NIO would read as its core count, or trap on, for 0) is overridden.
    public static func adopt() -> Int {
        let environment = ProcessInfo.processInfo.environment
        let count = forThisProcess(environment: environment)
        if nioSetting(environment) == nil { NIOSingletons.groupLoopCountSuggestion = count }
        return count
    }

    private static func nioSetting(_ environment: [String: String]) -> Int? {
        environment["NIO_SINGLETON_GROUP_LOOP_COUNT"].flatMap(Int.init).flatMap { (1...1024).contains($0) ? $0 : nil }
    }
}

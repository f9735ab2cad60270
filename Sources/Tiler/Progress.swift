import Foundation
import Logging
import Synchronization

/// Live progress of a long job: a bar redrawn on a terminal, periodic log lines otherwise.
public final class Progress: Sendable {
    private struct State {
        var label = ""
        var done = 0
        var total = 0
        var pixels = 0
        var bytes = 0
        var started = Date()
        var lastLog = Date.distantPast
        var drawn = false
    }

    private let state = Mutex(State())
    private let interactive: Bool
    private let logger: Logger

    /// `interactive` defaults to whether standard error is a terminal.
    public init(logger: Logger, interactive: Bool? = nil) {
        self.logger = logger
        self.interactive = interactive ?? (isatty(STDERR_FILENO) == 1)
    }

    /// Starts a phase of `total` units (shards).
    public func start(_ label: String, total: Int) {
        state.withLock {
            $0.label = label
            $0.total = total
            $0.done = 0
            $0.pixels = 0
            $0.bytes = 0
            $0.started = Date()
            $0.lastLog = Date()
        }
        if interactive { draw(force: true) }
    }

    /// Records finished units and the source pixels and bytes they accounted for.
    public func advance(units: Int = 1, pixels: Int = 0, bytes: Int = 0) {
        state.withLock {
            $0.done += units
            $0.pixels += pixels
            $0.bytes += bytes
        }
        draw(force: false)
    }

    /// Ends the phase, leaving the final line on screen.
    public func finish() {
        draw(force: true)
        if interactive { state.withLock { if $0.drawn { FileHandle.standardError.write(Data("\n".utf8)) } } }
    }

    private func draw(force: Bool) {
        let line: String? = state.withLock { s in
            let now = Date()
            let every: TimeInterval = interactive ? 0.2 : 10
            guard force || now.timeIntervalSince(s.lastLog) >= every else { return nil }
            s.lastLog = now
            let elapsed = max(1e-3, now.timeIntervalSince(s.started))
            let rate = Double(s.pixels) / elapsed / 1e6
            let fraction = s.total > 0 ? Double(s.done) / Double(s.total) : 1
            let eta = s.done > 0 && s.done < s.total ? elapsed / Double(s.done) * Double(s.total - s.done) : 0
            let stats =
                "\(s.done)/\(s.total) shards · \(String(format: "%.1f", rate)) Mpx/s · \(Self.bytes(s.bytes))"
                + (eta > 0 ? " · ETA \(Self.duration(eta))" : "")
            if interactive {
                let width = 24
                let filled = Int(fraction * Double(width))
                let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
                s.drawn = true
                return "\r\u{1B}[2K\(s.label) \(bar) \(Int(fraction * 100))% \(stats)"
            }
            return "\(s.label): \(stats)"
        }
        guard let line else { return }
        if interactive {
            FileHandle.standardError.write(Data(line.utf8))
        } else {
            logger.info("\(line)")
        }
    }

    /// "1.2 GB"-style sizes.
    public static func bytes(_ n: Int) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var v = Double(n)
        var u = 0
        while v >= 1000 && u < units.count - 1 {
            v /= 1000
            u += 1
        }
        return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
    }

    /// "1h02m", "3m20s", "12.5s".
    public static func duration(_ s: Double) -> String {
        if s >= 3600 { return String(format: "%dh%02dm", Int(s) / 3600, Int(s) % 3600 / 60) }
        if s >= 60 { return String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60) }
        return String(format: "%.1fs", s)
    }
}

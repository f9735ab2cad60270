import Foundation
import Testing

/// A condition that did not hold before its deadline.
public struct DeadlinePassed: Error, CustomStringConvertible {
    public let description: String
}

/// Waits for `condition` to hold, asking every 20 ms (or `interval`): the way to wait for what a
/// server does in the background (a rescan, a metrics hand-over, a job), never a fixed sleep. At
/// the deadline it fails naming what it waited for, where, and how long.
public func eventually(
    _ what: String, timeout: Duration = .seconds(120), every interval: Duration = .milliseconds(20),
    sourceLocation: SourceLocation = #_sourceLocation, _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while true {
        if try await condition() { return }
        guard clock.now < deadline else {
            throw DeadlinePassed(
                description: "waited \(timeout) for \(what) (\(sourceLocation.fileName):\(sourceLocation.line))")
        }
        try await Task.sleep(for: interval)
    }
}

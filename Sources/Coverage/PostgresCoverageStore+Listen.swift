import Foundation
import Logging
import PostgresNIO

extension CoverageDatabase {
    /// The revision each time it may have changed, starting with the current one: how a server
    /// learns of changes written by another process. This default polls `revision()` every
    /// `interval` and yields it when it differs (SQLite: one file, read locally); PostgreSQL
    /// answers from `LISTEN` instead, within milliseconds of the commit.
    public func revisions(polling interval: Duration = .seconds(1)) -> AsyncStream<Int64> {
        AsyncStream { continuation in
            let task = Task {
                var last: Int64?
                while !Task.isCancelled {
                    if let r = try? await revision(), r != last {
                        last = r
                        continuation.yield(r)
                    }
                    try? await Task.sleep(for: interval)
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}

extension PostgresCoverageStore {
    /// The revision at once, then every revision written by any server, as `NOTIFY
    /// dallage_coverage` delivers it at commit. Listens on a connection of its own (outside the
    /// pool); when that connection drops it reconnects, and yields the current revision again
    /// (notifications sent meanwhile are lost, the revision is not). Ends when the consumer
    /// stops iterating or the store is closed. `interval` is unused: nothing is polled.
    public func revisions(polling interval: Duration = .seconds(1)) -> AsyncStream<Int64> {
        let location = location
        let logger = logger
        return AsyncStream { continuation in
            let task = Task {
                var retry = Duration.milliseconds(100)
                while !Task.isCancelled, !isClosed {
                    do {
                        let connection = try await Self.connect(location, logger: logger)
                        do {
                            try await connection.listen(on: Self.channel) { notifications in
                                // Read after LISTEN is active: a change committed from now on is
                                // either in this value or notified.
                                continuation.yield(try await revision())
                                retry = .milliseconds(100)
                                for try await n in notifications {
                                    if let r = Int64(n.payload) { continuation.yield(r) }
                                }
                            }
                        } catch {
                            try? await connection.close()
                            throw error
                        }
                        try? await connection.close()
                    } catch {
                        if Task.isCancelled || isClosed { break }
                        logger.warning(
                            "coverage notifications from \(location) interrupted, reconnecting: \(Self.failure(error, location))"
                        )
                    }
                    try? await Task.sleep(for: retry)
                    retry = min(retry * 2, .seconds(5))
                }
                continuation.finish()
            }
            listening(task)
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}

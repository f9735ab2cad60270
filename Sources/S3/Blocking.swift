import Dispatch
import Synchronization

/// Runs async work from a synchronous caller's thread and waits for its result: for the tiler
/// and the command line, which are synchronous by design (GDAL handles per thread,
/// `concurrentPerform`), calling this async client. Call it from the main thread, a Dispatch
/// worker or a thread of one's own, never from Swift concurrency's pool: the work itself runs
/// there (and on NIO's event loops), so the wait holds one caller thread and nothing the work needs.
public func waitFor<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let result = Mutex<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let r: Result<T, any Error>
        do { r = .success(try await body()) } catch { r = .failure(error) }
        result.withLock { $0 = r }
        done.signal()
    }
    done.wait()
    guard let r = result.withLock({ $0 }) else { preconditionFailure("the task signalled without a result") }
    return try r.get()
}

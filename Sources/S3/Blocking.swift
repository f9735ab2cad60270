import Dispatch
import Synchronization

/// Runs async work from a synchronous caller's thread and waits for its result: for the tiler,
/// the command line and the blocking readers of an object-store pyramid (WMS maps, extracts,
/// transcoding), which are synchronous by design and call this async client. The work runs on
/// ``objectStoreExecutor``, not on Swift concurrency's pool: a caller blocked on a cooperative
/// thread (two of them, on two cores) would otherwise wait for work that could never be scheduled
/// once every cooperative thread is such a caller. Never call it from that executor itself.
public func waitFor<T: Sendable, E: Error>(_ body: @escaping @Sendable () async throws(E) -> T) throws(E) -> T {
    let result = Mutex<Result<T, E>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task(executorPreference: objectStoreExecutor) {
        let r: Result<T, E>
        do throws(E) {
            r = .success(try await body())
        } catch {
            r = .failure(error)
        }
        result.withLock { $0 = r }
        done.signal()
    }
    done.wait()
    guard let r = result.withLock({ $0 }) else { preconditionFailure("the task signalled without a result") }
    return try r.get()
}

/// Where object-store work that callers wait for runs: a serial queue (an overcommitting Dispatch
/// queue, so its thread exists even when every other one is blocked). Its jobs are short —
/// signing, parsing, copying; the bytes move on the HTTP client's event loops.
public let objectStoreExecutor = QueueTaskExecutor(label: "dallage.object-store")

/// A task executor on one serial Dispatch queue.
public final class QueueTaskExecutor: TaskExecutor {
    private let queue: DispatchQueue

    /// An executor on a new serial queue named `label`.
    public init(label: String) { queue = DispatchQueue(label: label) }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

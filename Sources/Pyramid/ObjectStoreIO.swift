import Foundation
import Synchronization

/// Where an object store's reads run, and how code that may block waits for one.
///
/// Readers that may block (WMS maps, extracts, transcoding, footprints, the catalog's rescans)
/// call a store through synchronous methods; an object store answers asynchronously. Waiting on a
/// semaphore for a task of the global executor would deadlock once every cooperative thread (two,
/// on two cores) is such a waiter: the task could never run. So every object-store read runs on
/// ``executor``, a task executor of its own, whose thread never waits: a blocked caller, wherever
/// it runs, only waits for work that can always progress.
public enum ObjectStoreIO {
    /// The executor object-store reads run on: a serial queue (an overcommitting Dispatch queue,
    /// so its thread exists even when every other one is blocked). Its jobs are short — signing,
    /// parsing, copying; the bytes move on the HTTP client's event loops.
    public static let executor = QueueTaskExecutor(label: "dallage.object-store")

    /// Runs `body` on ``executor`` and blocks the calling thread until it ends. Never call it from
    /// ``executor`` itself.
    public static func wait<T: Sendable, E: Error>(_ body: @escaping @Sendable () async throws(E) -> T) throws(E) -> T {
        let box = ResultBox<T, E>()
        Task(executorPreference: executor) {
            let result: Result<T, E>
            do throws(E) {
                result = .success(try await body())
            } catch {
                result = .failure(error)
            }
            box.finish(result)
        }
        return try box.wait().get()
    }

    /// Starts `body` on ``executor`` (a read several callers may share).
    public static func start<T: Sendable, E: Error>(_ body: @escaping @Sendable () async throws(E) -> T) -> Task<
        T, any Error
    > {
        Task(executorPreference: executor) { try await body() }
    }

    /// A result one thread waits for and another sets.
    private final class ResultBox<T: Sendable, E: Error>: Sendable {
        private let result = Mutex<Result<T, E>?>(nil)
        private let done = DispatchSemaphore(value: 0)

        func finish(_ r: Result<T, E>) {
            result.withLock { $0 = r }
            done.signal()
        }

        func wait() -> Result<T, E> {
            done.wait()
            // swift-format-ignore: NeverForceUnwrap
            return result.withLock { $0! }
        }
    }
}

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

import Foundation
import Testing

/// Where tests do work that holds a thread: a tiling run, a program waited for, a sleep between
/// polls. On Linux, Swift concurrency's threads are Dispatch's default-QoS pool, as many threads
/// as cores (two here), which `DispatchQueue.global()` and `concurrentPerform` share; a thread
/// that computes does not count as blocked, so the pool grows no thread for it. Two tiling tests at
/// once used to hold the whole pool for tens of seconds, and every live server in the same process
/// (their handlers run there) stopped answering: its clients gave up after 20 s.
///
/// Work here runs on the utility-QoS pool instead, a pool of its own, and a `concurrentPerform`
/// inside fans out there too, so servers under test keep their threads.
public enum Blocking {
    public static let queue = DispatchQueue.global(qos: .utility)

    /// Runs `work` on `queue`, waiting for it without holding a thread.
    public static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            queue.async { c.resume(with: Result { try work() }) }
        }
    }

    /// Runs `work` on a thread started for it alone: for a watcher that must react within
    /// milliseconds whatever the pools are busy with.
    public static func onThreadOfItsOwn<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            Thread { c.resume(with: Result { try work() }) }.start()
        }
    }
}

/// Runs the jobs of a task on `Blocking.queue`: the executor `.blocking` tests prefer.
public final class BlockingTestExecutor: TaskExecutor {
    public static let shared = BlockingTestExecutor()

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        Blocking.queue.async { job.runSynchronously(on: executor) }
    }
}

/// Runs each test of a suite (or one test) on `Blocking.queue` rather than Swift concurrency's
/// threads: `@Suite(.blocking)` on every suite whose tests hold a thread for long. Not for suites
/// that start a server in-process: its handlers would run there too.
///
/// As many such tests run at once as there are cores, as when each held one of Swift
/// concurrency's threads; the others wait their turn suspended, holding no thread. Unbounded,
/// every tiling test started at once; at twice the cores the suite was 3 % faster (340 s against
/// 351 s), but a live server's answer once took over 20 s beside them in a clean clone's run.
public struct BlockingTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    private static let turns = Turns(ProcessInfo.processInfo.activeProcessorCount)

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil else { return try await function() }
        await Self.turns.take()
        do {
            try await withTaskExecutorPreference(BlockingTestExecutor.shared) { try await function() }
            await Self.turns.give()
        } catch {
            await Self.turns.give()
            throw error
        }
    }
}

/// `count` turns, taken and given back in the order they were asked for.
private actor Turns {
    private var free: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(_ count: Int) { free = max(1, count) }

    func take() async {
        if free > 0 {
            free -= 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func give() {
        if waiting.isEmpty { free += 1 } else { waiting.removeFirst().resume() }
    }
}

extension Trait where Self == BlockingTrait {
    /// The tests hold threads (tiling runs, programs waited for): run them on a pool of their own.
    public static var blocking: Self { BlockingTrait() }
}

import Foundation
import Synchronization

/// A shared work counter: each worker takes the next index.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).oldValue }
    /// The next value `next()` would give, without taking it.
    var peek: Int { value.load(ordering: .relaxed) }
}

/// Fixed slots that workers fill by index.
final class ResultSlots<T: Sendable>: Sendable {
    private let slots: Mutex<[T?]>
    init(count: Int) { slots = Mutex([T?](repeating: nil, count: count)) }
    func set(_ i: Int, _ v: T) { slots.withLock { $0[i] = v } }
    var values: [T] { slots.withLock { $0.compactMap { $0 } } }
}

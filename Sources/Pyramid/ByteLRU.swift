import Synchronization

/// A least-recently-used cache bounded by the total cost (bytes) of its values: transcoded tiles
/// (the serving core), shard indexes of an object store.
public final class ByteLRU<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct Entry {
        var value: Value
        var cost: Int
        var tick: UInt64
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        var total = 0
        var tick: UInt64 = 0
    }

    /// The most cost kept at once.
    public let capacity: Int
    private let state = Mutex(State())

    /// An empty cache holding at most `capacity` in cost.
    public init(capacity: Int) { self.capacity = capacity }

    /// The value kept under `key`, now the most recently used; nil when none.
    public func get(_ key: Key) -> Value? {
        state.withLock { s in
            guard var e = s.entries[key] else { return nil }
            s.tick += 1
            e.tick = s.tick
            s.entries[key] = e
            return e.value
        }
    }

    /// Keeps `value` under `key`; a value costing more than the whole capacity is not kept.
    public func set(_ key: Key, _ value: Value, cost: Int) {
        guard cost <= capacity else { return }
        state.withLock { s in
            if let old = s.entries[key] { s.total -= old.cost }
            s.tick += 1
            s.entries[key] = Entry(value: value, cost: cost, tick: s.tick)
            s.total += cost
            if s.total > capacity {
                // Evict the oldest quarter at once so eviction cost is amortised.
                let sorted = s.entries.sorted { $0.value.tick < $1.value.tick }
                for (k, e) in sorted where s.total > capacity * 3 / 4 {
                    s.entries[k] = nil
                    s.total -= e.cost
                }
            }
        }
    }

    /// Drops the value kept under `key`, if any.
    public func remove(_ key: Key) {
        state.withLock { s in
            if let old = s.entries.removeValue(forKey: key) { s.total -= old.cost }
        }
    }

    /// Drops everything (after a publication change, say).
    public func removeAll() { state.withLock { $0 = State() } }

    /// The cost of what is kept.
    public var totalCost: Int { state.withLock { $0.total } }
    /// How many values are kept.
    public var count: Int { state.withLock { $0.entries.count } }
}

import GeoGrid

/// A bucket grid over rectangles (dalle footprints) answering "which meet this box?" quickly.
struct RectIndex<Value: Sendable>: Sendable {
    private let cell: Double
    private var buckets: [Int64: [Int]] = [:]
    private(set) var items: [(box: BoundingBox, value: Value)] = []

    init(_ items: [(BoundingBox, Value)]) {
        self.items = items.map { (box: $0.0, value: $0.1) }
        let mean = items.isEmpty ? 1 : items.reduce(0.0) { $0 + max($1.0.width, $1.0.height) } / Double(items.count)
        cell = max(mean, 1e-9)
        for (i, it) in self.items.enumerated() {
            for k in keys(it.box) { buckets[k, default: []].append(i) }
        }
    }

    private func keys(_ b: BoundingBox) -> [Int64] {
        let x0 = Int64((b.minX / cell).rounded(.down))
        let x1 = Int64((b.maxX / cell).rounded(.down))
        let y0 = Int64((b.minY / cell).rounded(.down))
        let y1 = Int64((b.maxY / cell).rounded(.down))
        guard (x1 - x0 + 1) * (y1 - y0 + 1) < 1_000_000 else { return [] }
        var out: [Int64] = []
        for x in x0...x1 { for y in y0...y1 { out.append(x &* 73_856_093 ^ y &* 19_349_663) } }
        return out
    }

    /// Indices of the rectangles that share area with `box`.
    func query(_ box: BoundingBox) -> [Int] {
        let ks = keys(box)
        if ks.isEmpty { return items.indices.filter { items[$0].box.intersects(box) } }
        var seen = Set<Int>()
        for k in ks {
            for i in buckets[k] ?? [] where items[i].box.intersects(box) { seen.insert(i) }
        }
        return seen.sorted()
    }

    func intersectsAny(_ box: BoundingBox) -> Bool {
        let ks = keys(box)
        if ks.isEmpty { return items.contains { $0.box.intersects(box) } }
        for k in ks {
            for i in buckets[k] ?? [] where items[i].box.intersects(box) { return true }
        }
        return false
    }
}

import Foundation
import GeoGrid
import Pyramid

/// Where the dalles changed since a pyramid's current generation: the footprints (grid CRS) of
/// the dalles added, replaced or removed — for a replaced one, before and after — widened by the
/// reach of a resampling kernel. A tile (at any level) that meets none of them has the pixels it
/// had, so its stored bytes are copied; a shard that meets none is reused as it is.
struct ChangeArea: Sendable {
    /// Asked once per tile of a rebuilt shard: a tranche's few boxes are scanned in a row (no
    /// hashing, no allocation); a bucket index past a few dozen.
    private let boxes: [BoundingBox]
    private let index: RectIndex<Int>?

    init(_ boxes: [BoundingBox]) {
        self.boxes = boxes
        index = boxes.count > 32 ? RectIndex(boxes.enumerated().map { ($1, $0) }) : nil
    }

    var isEmpty: Bool { boxes.isEmpty }

    func touches(_ box: BoundingBox) -> Bool {
        if let index { return index.intersectsAny(box) }
        for b in boxes where b.intersects(box) { return true }
        return false
    }
}

/// What one build of a grid does against the generation it starts from: the plan applied to
/// the store as it is (plan, then execute: nothing here reads pixels).
public struct GridUpdate: Sendable {
    public var grid: String
    /// The generation built on (0: none yet) and the one this build makes.
    public var base: Int
    public var generation: Int
    /// Why nothing of the base generation is reused; nil for an incremental build.
    public var fullReason: String?
    /// Dalle file names, sorted.
    public var added: [String] = []
    public var changed: [String] = []
    public var removed: [String] = []
    /// Per band, deepest first: shards built (anew or over their previous version) and shards
    /// kept as they are from the base generation.
    public var rebuild: [[TileCoordinate]]
    public var reuse: [[PyramidManifest.Shard]]
    /// Shards of the base generation no dalle reaches any more.
    public var dropped: Int = 0
    var area: ChangeArea?

    public var rebuildCount: Int { rebuild.reduce(0) { $0 + $1.count } }

    /// True when the build would list exactly the shards `previous` lists.
    public func isNoChange(previous: PyramidManifest) -> Bool {
        fullReason == nil && rebuildCount == 0 && dropped == 0 && reuseCount == previous.shards.count
    }
    public var reuseCount: Int { reuse.reduce(0) { $0 + $1.count } }

    /// Compares `sources` with what the base generation was built from and sorts the plan's
    /// shards into rebuilt and reused. `previous` is the current manifest (nil: first build).
    static func make(
        plan: GridPlan, sources: GenerationSources, previous: PyramidManifest?, previousSources: GenerationSources?
    ) -> GridUpdate {
        let base = previous?.generation ?? 0
        var u = GridUpdate(
            grid: plan.tms.id, base: base, generation: base + 1, rebuild: plan.shards,
            reuse: plan.shards.map { _ in [] })
        let names = { (d: [GenerationSources.Dalle]) in d.map { ($0.path as NSString).lastPathComponent }.sorted() }
        guard let previous else {
            u.fullReason = "first build"
            u.added = names(sources.dalles)
            return u
        }
        let planned = Set(plan.shards.joined())
        u.dropped = previous.shards.filter { !planned.contains($0.coordinate) }.count
        guard let previousSources else {
            u.fullReason = "generation \(base) did not record its sources"
            return u
        }
        guard previousSources.settings == sources.settings else {
            u.fullReason = "the settings changed (\(previousSources.settings) → \(sources.settings))"
            return u
        }
        let before = Dictionary(previousSources.dalles.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        let now = Dictionary(sources.dalles.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        var boxes: [BoundingBox] = []
        let cell = plan.tms.tileMatrices[plan.scheme.maxZoom].cellSize
        func widened(_ d: GenerationSources.Dalle) -> BoundingBox {
            d.footprint.expanded(by: 4 * max(cell, d.resolution))
        }
        var added: [GenerationSources.Dalle] = []
        var changed: [GenerationSources.Dalle] = []
        var removed: [GenerationSources.Dalle] = []
        for d in sources.dalles {
            guard let old = before[d.path] else {
                added.append(d)
                boxes.append(widened(d))
                continue
            }
            if old != d {
                changed.append(d)
                boxes += [widened(old), widened(d)]
            }
        }
        for d in previousSources.dalles where now[d.path] == nil {
            removed.append(d)
            boxes.append(widened(d))
        }
        (u.added, u.changed, u.removed) = (names(added), names(changed), names(removed))
        let area = ChangeArea(boxes)
        u.area = area
        let kept = Dictionary(previous.shards.map { ($0.coordinate, $0) }, uniquingKeysWith: { a, _ in a })
        for (b, shards) in plan.shards.enumerated() {
            var rebuild: [TileCoordinate] = []
            var reuse: [PyramidManifest.Shard] = []
            for s in shards {
                if area.touches(plan.tms.bounds(of: s)) {
                    rebuild.append(s)
                } else if let old = kept[s] {
                    reuse.append(old)
                }
                // Else the shard was planned before too and came out empty: it still would.
            }
            u.rebuild[b] = rebuild
            u.reuse[b] = reuse
        }
        return u
    }
}

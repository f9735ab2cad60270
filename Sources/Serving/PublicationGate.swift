import Coverage
import Foundation
import GeoGrid
import Logging
import Raster
import Synchronization

/// Decides what a `publish: by-status` tileset may show: only the perimeters of its projects
/// whose current status is `disponible`. The published areas are reloaded when the coverage
/// database changes (polled every second, and at once after a write through the API) or the day
/// changes; each reload bumps the publication `epoch`, which keys every clipped tile and every
/// remembered decision, so nothing stale is served after a change.
public final class PublicationGate: Sendable {
    public enum Decision {
        case inside
        case outside
        /// Crosses the boundary: the published area in the grid's CRS.
        case crossing(Geometry)
    }

    let coverage: CoverageService
    let logger: Logger
    private struct State {
        var revision: Int64 = -1
        var day = ""
        var epoch = 0
        /// Published perimeter per tileset, Lambert-93.
        var perimeters: [String: Geometry] = [:]
        /// The same, prepared for tests, per tileset and grid CRS.
        var prepared: [String: PreparedGeometry] = [:]
    }
    private let state = Mutex(State())
    /// `State.epoch`, readable without the lock.
    private let changes = Atomic<Int>(0)

    public init(coverage: CoverageService, logger: Logger) {
        self.coverage = coverage
        self.logger = logger
    }

    /// The publication epoch: bumped at every reload of the published areas; read without a lock.
    public var epoch: Int { changes.load(ordering: .acquiring) }

    /// Reloads when the database or the day changed (`force` after a write).
    public func refresh(tilesets: [String], force: Bool = false) async {
        do {
            let revision = try await coverage.store.revision()
            let day = coverage.currentDay
            let stale = state.withLock { force || $0.revision != revision || $0.day != day }
            guard stale else { return }
            var perimeters: [String: Geometry] = [:]
            for t in tilesets { perimeters[t] = try await coverage.publishedPerimeter(tileset: t) }
            state.withLock {
                $0.revision = revision
                $0.day = day
                $0.epoch += 1
                $0.perimeters = perimeters
                $0.prepared = [:]
                changes.store($0.epoch, ordering: .releasing)
            }
        } catch {
            logger.error("cannot reload published perimeters: \(error)")
        }
    }

    /// The published perimeter of a tileset (Lambert-93; empty when nothing is published).
    public func perimeter(of tileset: String) -> Geometry {
        state.withLock { $0.perimeters[tileset] } ?? Geometry.empty()
    }

    /// Where a tile of a pyramid stands against the published area of its tileset, and the epoch
    /// of that answer.
    public func decide(_ pyramid: ServedPyramid, _ tile: TileCoordinate) throws -> (Decision, epoch: Int) {
        let tms = pyramid.manifest.tileMatrixSet
        return try decide(tileset: pyramid.tileset, crs: tms.crs, tile: tms.bounds(of: tile))
    }

    /// Where a box stands against the published area of a tileset.
    public func decide(tileset: String, crs: String, tile: BoundingBox) throws -> (Decision, epoch: Int) {
        try state.withLock { s in
            let key = "\(tileset)|\(crs)"
            let prepared: PreparedGeometry
            if let p = s.prepared[key] {
                prepared = p
            } else {
                var g = s.perimeters[tileset] ?? Geometry.empty()
                let target = try SpatialReference(crs)
                let l93 = try SpatialReference(epsg: 2154)
                if !target.isSame(as: l93), !g.isEmpty {
                    g = try g.transformed(CoordinateTransform(from: l93, to: target))
                }
                prepared = PreparedGeometry(g)
                s.prepared[key] = prepared
            }
            let box = Geometry.rectangle(tile)
            if prepared.geometry.isEmpty || !prepared.intersects(box) { return (.outside, s.epoch) }
            if prepared.contains(box) { return (.inside, s.epoch) }
            return (.crossing(prepared.geometry), s.epoch)
        }
    }
}

/// Gate decisions remembered by one caller (a connection of the fast lane, a request of the
/// router) for one publication epoch: whether a block of tiles — the tile's ancestor four levels
/// up, 16×16 tiles — or the tile itself is wholly inside the published area.
public struct PublicationMemo: Sendable {
    struct Key: Hashable {
        var tileset: String
        var grid: String
        var block: TileCoordinate
    }
    fileprivate var epoch = -1
    fileprivate var standings: [Key: PublicationGate.Standing] = [:]

    public init() {}
}

extension PublicationGate {
    /// Where a tile stands against the published area, as the fast lane needs it: wholly inside
    /// (its stored stream may go out), wholly outside (it shows nothing), or across the boundary.
    public enum Standing: Sendable {
        case inside, outside, crossing
    }

    /// Whether a tile of a gated pyramid lies wholly inside the published area: true lets the
    /// stored stream go out as it is.
    public func isWhollyPublished(_ pyramid: ServedPyramid, _ tile: TileCoordinate, memo: inout PublicationMemo)
        -> Bool
    {
        standing(pyramid, tile, memo: &memo) == .inside
    }

    /// Where a tile of a gated pyramid stands; nil when it cannot be decided now. Answered from
    /// `memo` when it knows the tile's block or the tile for the current epoch, else decided and
    /// remembered (block first: one decision then serves a whole neighbourhood, inside or out).
    public func standing(_ pyramid: ServedPyramid, _ tile: TileCoordinate, memo: inout PublicationMemo)
        -> Standing?
    {
        let now = epoch
        if now != memo.epoch || memo.standings.count > 65_536 {
            memo.standings.removeAll(keepingCapacity: true)
            memo.epoch = now
        }
        let blockLevels = min(4, max(0, tile.z - pyramid.manifest.minZoom))
        // The block first, then (when it is not the tile itself) the tile.
        for up in stride(from: blockLevels, through: 0, by: -max(1, blockLevels)) {
            let block = tile.ancestor(levels: up)
            let key = PublicationMemo.Key(tileset: pyramid.tileset, grid: pyramid.grid, block: block)
            let standing: Standing
            if let known = memo.standings[key] {
                standing = known
            } else {
                guard let (decision, at) = try? decide(pyramid, block) else { return nil }
                standing =
                    switch decision {
                    case .inside: .inside
                    case .outside: .outside
                    case .crossing: .crossing
                    }
                if at == now { memo.standings[key] = standing }
            }
            // A block wholly in or out says it for every tile in it.
            if standing != .crossing || up == 0 { return standing }
        }
        return .crossing
    }
}

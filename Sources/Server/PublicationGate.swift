import Coverage
import Foundation
import GeoGrid
import Logging
import Raster
import ServiceLifecycle
import Synchronization

/// Decides what a `publish: by-status` tileset may show: only the perimeters of its projects
/// whose current status is `disponible`. The published areas are reloaded when the coverage
/// database changes (polled every second, and at once after a write through the API) or the day
/// changes; each reload bumps `generation`, which keys every clipped tile, so no stale clip is
/// served after a change.
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
        var generation = 0
        /// Published perimeter per tileset, Lambert-93.
        var perimeters: [String: Geometry] = [:]
        /// The same, prepared for tests, per tileset and grid CRS.
        var prepared: [String: PreparedGeometry] = [:]
    }
    private let state = Mutex(State())
    /// `State.generation`, readable without the lock.
    private let changes = Atomic<Int>(0)

    public init(coverage: CoverageService, logger: Logger) {
        self.coverage = coverage
        self.logger = logger
    }

    /// Bumped at every reload of the published areas; read without a lock.
    public var generation: Int { changes.load(ordering: .acquiring) }

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
                $0.generation += 1
                $0.perimeters = perimeters
                $0.prepared = [:]
                changes.store($0.generation, ordering: .releasing)
            }
        } catch {
            logger.error("cannot reload published perimeters: \(error)")
        }
    }

    /// The published perimeter of a tileset (Lambert-93; empty when nothing is published).
    public func perimeter(of tileset: String) -> Geometry {
        state.withLock { $0.perimeters[tileset] } ?? Geometry.empty()
    }

    /// Where a tile stands against the published area of its tileset.
    public func decide(tileset: String, crs: String, tile: BoundingBox) throws -> (Decision, generation: Int) {
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
            if prepared.geometry.isEmpty || !prepared.intersects(box) { return (.outside, s.generation) }
            if prepared.contains(box) { return (.inside, s.generation) }
            return (.crossing(prepared.geometry), s.generation)
        }
    }
}

/// Polls the coverage database so status changes made elsewhere (the CLI) show within a second.
struct PublicationWatcher: Service {
    let gate: PublicationGate
    let catalog: PyramidCatalog

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await gate.refresh(tilesets: catalog.gatedTilesets)
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}

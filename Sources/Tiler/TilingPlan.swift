import Foundation
import GeoGrid
import Pyramid
import Raster

/// What a run will build for one grid: levels, bands and the shards of each band.
public struct GridPlan: Sendable {
    public var tms: TileMatrixSet
    public var scheme: ShardScheme
    /// Shards per band, deepest band first.
    public var shards: [[TileCoordinate]]
    /// Source footprints in the grid's CRS.
    public var footprints: [BoundingBox]
    public var bounds: BoundingBox
    public var wgs84Bounds: BoundingBox
    public var levels: [PyramidManifest.LevelLimits]
    public var estimatedTiles: Int
    public var estimatedBytes: Int

    public var shardCount: Int { shards.reduce(0) { $0 + $1.count } }
}

extension Planner {
    /// Why `source` cannot be tiled in `grids`, or nil when it lies inside each of them: a
    /// footprint that does not transform into a grid's CRS, or reaches beyond the grid's extent,
    /// comes from a CRS mislabelled (Lambert-93 metres tagged as degrees) or a georeferencing off
    /// by powers of ten, and would stretch the pyramid's limits over the whole grid.
    public static func misplacement(
        of source: SourceEntry, in grids: [TileMatrixSet], transforms: inout [String: CoordinateTransform?]
    ) -> String? {
        let b = source.bounds
        guard b.minX.isFinite, b.minY.isFinite, b.maxX.isFinite, b.maxY.isFinite, b.width > 0, b.height > 0 else {
            return "its georeferencing gives no area (\(b))"
        }
        for tms in grids {
            let footprint: BoundingBox
            do {
                footprint = try Self.footprint(of: source, in: tms, transforms: &transforms).box
            } catch {
                return
                    "its footprint \(Self.rounded(b)) cannot be placed in grid \(tms.id) (\(Self.crsName(tms))): wrong CRS? (\(error))"
            }
            let extent = tms.extent
            guard extent.expanded(by: extent.width * 1e-9).contains(footprint) else {
                return
                    "its footprint \(Self.rounded(footprint)) in \(Self.crsName(tms)) is not inside grid \(tms.id)'s extent \(Self.rounded(extent)): wrong CRS or georeferencing?"
            }
        }
        return nil
    }

    /// `source`'s footprint in `tms`'s CRS, and whether it had to be transformed there (not in
    /// the same CRS). `transforms` keeps the transforms made, by source CRS and grid CRS.
    static func footprint(
        of source: SourceEntry, in tms: TileMatrixSet, transforms: inout [String: CoordinateTransform?]
    ) throws -> (box: BoundingBox, transformed: Bool) {
        let key = source.crsWKT + "\u{0}" + tms.crs
        if transforms[key] == nil {
            let srs = try SpatialReference(source.crsWKT)
            let grid = try SpatialReference(tms.crs)
            transforms[key] = .some(srs.isSame(as: grid) ? nil : try CoordinateTransform(from: srs, to: grid))
        }
        guard let t = transforms[key] ?? nil else { return (source.bounds, false) }
        return (try t.transform(source.bounds), true)
    }

    static func crsName(_ tms: TileMatrixSet) -> String { tms.epsg.map { "EPSG:\($0)" } ?? tms.crs }

    static func rounded(_ b: BoundingBox) -> String {
        let n = [b.minX, b.minY, b.maxX, b.maxY].map { $0.magnitude < 1e9 ? String(format: "%.0f", $0) : "\($0)" }
        return "[\(n.joined(separator: ", "))]"
    }
}

/// Pure planning from the source index: which shards intersect the real footprint of the
/// sources (dalle by dalle, not the bounding box of everything) and how deep to go.
public enum Planner {
    /// Plans one grid. `zoomLimits` comes from a level-limited grid id (`2154_5cm_6_22`).
    public static func plan(
        grid tms: TileMatrixSet, sources: [SourceEntry], minZoom: Int?, maxZoom: Int?,
        levelsPerBand: Int = ShardScheme.defaultLevelsPerBand
    ) throws -> GridPlan {
        guard !sources.isEmpty else { throw TilerError.noSources("every source was skipped") }
        let gridSRS = try SpatialReference(tms.crs)
        var transforms: [String: CoordinateTransform?] = [:]
        var footprints: [BoundingBox] = []
        var resolutions: [Double] = []
        for e in sources {
            let (b, transformed) = try footprint(of: e, in: tms, transforms: &transforms)
            footprints.append(b)
            resolutions.append(transformed ? min(b.width / Double(e.width), b.height / Double(e.height)) : e.resolution)
        }
        let finest = resolutions.min() ?? 1
        let deepest = max(0, min(tms.maxZoom, maxZoom ?? tms.zoom(forResolution: finest)))
        let top = max(0, min(deepest, minZoom ?? 0))
        let scheme = ShardScheme(minZoom: top, maxZoom: deepest, levelsPerBand: levelsPerBand)
        var shards: [[TileCoordinate]] = []
        for (i, band) in scheme.bands.enumerated() {
            var set = Set<TileCoordinate>()
            if i == 0 {
                for f in footprints {
                    if let r = tms.tiles(covering: f, z: band.top) { set.formUnion(r.tiles) }
                }
            } else {
                let below = scheme.bands[i - 1]
                for s in shards[i - 1] { set.insert(s.ancestor(levels: below.top - band.top)) }
            }
            shards.append(set.sorted { ($0.row, $0.col) < ($1.row, $1.col) })
        }
        let bounds = footprints.dropFirst().reduce(footprints[0]) { $0.union($1) }
        var levels: [PyramidManifest.LevelLimits] = []
        for z in top...deepest {
            if let r = tms.tiles(covering: bounds, z: z) {
                levels.append(.init(z: z, minCol: r.minCol, maxCol: r.maxCol, minRow: r.minRow, maxRow: r.maxRow))
            }
        }
        let wgs84 =
            (try? CoordinateTransform(from: gridSRS, to: try SpatialReference.wgs84()).transform(bounds)) ?? bounds
        let cell = tms.tileMatrices[deepest]
        let area = footprints.reduce(0.0) { $0 + $1.width * $1.height }
        let deepestTiles = area / (cell.tileSpanX * cell.tileSpanY)
        // Bounded: dalles are checked to lie inside the grid (`misplacement`), but a plan's sum
        // must not trap whatever it is given.
        let tiles = Int(bounded: deepestTiles * 4 / 3, .up)
        return GridPlan(
            tms: tms, scheme: scheme, shards: shards, footprints: footprints, bounds: bounds, wgs84Bounds: wgs84,
            levels: levels, estimatedTiles: tiles,
            // Aerial imagery in JPEG q85 4:2:0 averages about 1.2 bits per pixel.
            estimatedBytes: Int(bounded: Double(tiles) * 65536 * 0.15))
    }
}

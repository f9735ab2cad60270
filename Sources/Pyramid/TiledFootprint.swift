import Foundation
import GeoGrid
import Raster
import Synchronization

/// The area a pyramid really covers, traced from its tiles' masks at one level and kept as
/// `footprint.json` beside `pyramid.json`: `{"crs", "level", "area_m2", "geometry"}` (GeoJSON
/// geometry in the grid's CRS). Coverage progress reads it; nothing reopens the shards.
public enum TiledFootprint {
    public static let fileName = "footprint.json"

    /// Traces the footprint at the finest level whose whole extent fits in `maxPixels` (16 Mpx by
    /// default: ≈ 45 m pixels over a region of 32,000 km², native pixels for a small area), from the decoded masks.
    public static func trace(_ reader: PyramidReader, maxPixels: Int = defaultMaxPixels) throws -> (
        Geometry, level: Int
    ) {
        let m = reader.manifest
        let level = Self.level(
            levels: m.levels, minZoom: m.minZoom, maxZoom: m.maxZoom, tileSize: m.tileSize, maxPixels: maxPixels)
        guard let l = m.limits(z: level) else {
            return (Geometry.empty(), level)
        }
        let size = m.tileSize
        let width = (l.maxCol - l.minCol + 1) * size
        let height = (l.maxRow - l.minRow + 1) * size
        let mask = UnsafeMutablePointer<UInt8>.allocate(capacity: width * height)
        defer { mask.deallocate() }
        mask.initialize(repeating: 0, count: width * height)
        // Rows of tiles decoded on every core, each into its own band of the mask.
        let failure = Mutex<(any Error)?>(nil)
        let rows = l.maxRow - l.minRow + 1
        let target = MaskBand(base: mask)
        let z = level
        DispatchQueue.concurrentPerform(iterations: rows) { i in
            let row = l.minRow + i
            do {
                for col in l.minCol...l.maxCol {
                    guard let rgba = try reader.decodeTile(TileCoordinate(z: z, col: col, row: row)) else {
                        continue
                    }
                    let x0 = (col - l.minCol) * size
                    let y0 = i * size
                    for y in 0..<size {
                        let line = target.base + (y0 + y) * width + x0
                        for x in 0..<size { line[x] = rgba[(y * size + x) * 4 + 3] >= 128 ? 255 : 0 }
                    }
                }
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        let first = m.tileMatrixSet.bounds(of: TileCoordinate(z: level, col: l.minCol, row: l.minRow))
        let transform = GeoTransform(
            originX: first.minX, originY: first.maxY, resolution: (first.maxX - first.minX) / Double(size))
        return (try Geometry.polygonize(mask: mask, width: width, height: height, transform: transform), level)
    }

    /// The mask being traced, written by several threads at once, each in rows of its own.
    private struct MaskBand: @unchecked Sendable {
        let base: UnsafeMutablePointer<UInt8>
    }

    /// The most pixels a trace decodes.
    public static let defaultMaxPixels = 16 << 20

    /// The level a trace reads: the finest whose whole extent fits in `maxPixels`. A build into
    /// object storage keeps that level of its shards in its staging folder to trace from.
    public static func level(
        levels: [PyramidManifest.LevelLimits], minZoom: Int, maxZoom: Int, tileSize: Int,
        maxPixels: Int = defaultMaxPixels
    ) -> Int {
        for z in stride(from: maxZoom, through: minZoom, by: -1) {
            guard let l = levels.first(where: { $0.z == z }) else { continue }
            let px = (l.maxCol - l.minCol + 1) * (l.maxRow - l.minRow + 1) * tileSize * tileSize
            if px <= maxPixels { return z }
        }
        return minZoom
    }

    /// Traces and writes the footprint of the pyramid in `directory` (atomically).
    @discardableResult
    public static func record(_ reader: PyramidReader, directory: String) throws -> Geometry {
        let (g, level) = try trace(reader)
        let crs = reader.manifest.tileMatrixSet.crs
        let text = """
            {"crs":"\(crs)","level":\(level),"area_m2":\(g.area),"geometry":\(g.geoJSON(precision: 3))}
            """
        let path = (directory as NSString).appendingPathComponent(fileName)
        let tmp = (directory as NSString).appendingPathComponent(".\(fileName).\(ShardWriter.writerToken).tmp")
        try Data(text.utf8).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw RasterError("cannot write \(path)") }
        return g
    }

    /// Reads a footprint, in Lambert-93.
    public static func read(path: String) throws -> Geometry { try load(path: path).lambert93 }

    /// Reads a footprint: the CRS of the grid it was traced on, and the area in Lambert-93.
    public static func load(path: String) throws -> (crs: String, lambert93: Geometry) {
        try load(data: Data(contentsOf: URL(fileURLWithPath: path)), name: path)
    }

    /// Reads a footprint from the bytes of its file (`name` says where they came from in errors).
    public static func load(data: Data, name: String) throws -> (crs: String, lambert93: Geometry) {
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let crs = object["crs"] as? String, let geometry = object["geometry"]
        else { throw RasterError("\(name) is not a footprint") }
        let g = try Geometry.fromGeoJSON(
            String(decoding: try JSONSerialization.data(withJSONObject: geometry), as: UTF8.self))
        let source = try SpatialReference(crs)
        let l93 = try SpatialReference(epsg: 2154)
        return (crs, source.isSame(as: l93) ? g : try g.transformed(CoordinateTransform(from: source, to: l93)))
    }
}

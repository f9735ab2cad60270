import Foundation
import GeoGrid
import Raster

/// What the tiler knows of one source dalle, read once and kept beside the store.
public struct SourceEntry: Sendable, Codable, Hashable {
    public var path: String
    public var fileSize: Int
    public var modified: Double
    /// nil when the dalle is usable; otherwise why it is skipped.
    public var error: String?
    public var width: Int = 0
    public var height: Int = 0
    public var bands: Int = 0
    public var geoTransform: [Double] = []
    public var crsWKT: String = ""
    public var epsg: Int?
    public var overviews: Int = 0
    public var blockWidth: Int = 0
    public var blockHeight: Int = 0
    /// Footprint in the source CRS.
    public var bounds: BoundingBox = BoundingBox(minX: 0, minY: 0, maxX: 0, maxY: 0)

    public var isUsable: Bool { error == nil }
    public var resolution: Double { geoTransform.count == 6 ? abs(geoTransform[1]) : 0 }
    public var name: String { (path as NSString).lastPathComponent }
}

/// The georeferencing of every source, built in parallel and cached in `sources.json` so a rerun
/// over 30,000 dalles reopens only the files whose size or date changed.
public struct SourceIndex: Sendable, Codable {
    public var entries: [SourceEntry]

    public var usable: [SourceEntry] { entries.filter(\.isUsable) }
    public var skipped: [SourceEntry] { entries.filter { !$0.isUsable } }

    public static let fileName = "sources.json"

    /// A digest of the usable sources (path, size, date): a resumed run must see the same one.
    public var digest: String {
        var crc: UInt32 = 0
        for e in entries {
            let line = "\(e.path)|\(e.fileSize)|\(e.modified)|\(e.error == nil)\n"
            crc = Array(line.utf8).withUnsafeBytes { Deflate.crc32($0, previous: crc) }
        }
        return String(format: "%08x", crc) + "-\(entries.count)"
    }

    /// Indexes `paths`, reusing `cache` entries whose file size and modification date are unchanged.
    public static func build(
        paths: [String], cache: SourceIndex?, threads: Int, onProgress: (@Sendable (Int) -> Void)? = nil
    ) -> SourceIndex {
        let cached = Dictionary((cache?.entries ?? []).map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        let results = ResultSlots<SourceEntry>(count: paths.count)
        let counter = Counter()
        DispatchQueue.concurrentPerform(iterations: max(1, threads)) { worker in
            while true {
                let i = counter.next()
                if i >= paths.count { break }
                let path = paths[i]
                let (size, mtime) = Self.fileState(path)
                if let c = cached[path], c.fileSize == size, c.modified == mtime {
                    results.set(i, c)
                } else {
                    results.set(i, inspect(path: path, size: size, mtime: mtime))
                }
                onProgress?(i)
            }
        }
        return SourceIndex(entries: results.values)
    }

    /// A dalle's size and modification time; size −1 when it is not there. Paths of GDAL's virtual
    /// file systems (`/vsis3/…`) are asked of GDAL.
    static func fileState(_ path: String) -> (size: Int, modified: Double) {
        if path.hasPrefix("/vsi") { return VirtualFiles.stat(path) ?? (-1, 0) }
        var st = stat()
        guard stat(path, &st) == 0 else { return (-1, 0) }
        return (Int(st.st_size), Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
    }

    /// Opens one dalle and checks it can really be decoded (first and last blocks).
    static func inspect(path: String, size: Int, mtime: Double) -> SourceEntry {
        var e = SourceEntry(path: path, fileSize: size, modified: mtime)
        guard size >= 0 else {
            e.error = "file not found"
            return e
        }
        do {
            let ds = try Dataset.open(path)
            e.width = ds.width
            e.height = ds.height
            e.bands = ds.bandCount
            guard ds.dataTypeName == "Byte" else { throw RasterError("pixels are \(ds.dataTypeName), not 8-bit") }
            guard [1, 3, 4].contains(e.bands) else { throw RasterError("\(e.bands) bands (expected 1, 3 or 4)") }
            guard let gt = ds.geoTransform else { throw RasterError("no georeferencing") }
            guard gt.isNorthUp else { throw RasterError("rotated georeferencing is not supported") }
            guard let srs = ds.spatialReference else { throw RasterError("no coordinate reference system") }
            e.geoTransform = gt.coefficients
            e.crsWKT = srs.wkt
            e.epsg = srs.epsg
            e.overviews = ds.overviewCount
            (e.blockWidth, e.blockHeight) = ds.blockSize
            e.bounds = gt.bounds(width: ds.width, height: ds.height)
            // Headers can be fine while the pixels are not: decode the first and the last block.
            // JPEG 2000 decodes them at its coarsest resolution level (a window of 2^levels pixels
            // read into one): the block's data must all be there just the same, a truncated file
            // fails, and it costs a few milliseconds, not two full blocks (an eighth of the
            // decoding of a tiling run on dalles of 4×4 blocks).
            let jpeg2000 = ds.driverName.hasPrefix("JP2") || ds.driverName == "JPEG2000"
            let side = jpeg2000 ? min(1 << min(e.overviews, 5), ds.width, ds.height) : 1
            var px = [UInt8](repeating: 0, count: 4)
            try px.withUnsafeMutableBufferPointer { p in
                try ds.read(
                    x: 0, y: 0, width: side, height: side, bands: [1], into: p.baseAddress!, bufferWidth: 1,
                    bufferHeight: 1)
                try ds.read(
                    x: ds.width - side, y: ds.height - side, width: side, height: side, bands: [1],
                    into: p.baseAddress!, bufferWidth: 1, bufferHeight: 1)
            }
        } catch {
            e.error = "\(error)"
        }
        return e
    }

    /// Loads a cached index; nil when absent or unreadable (it is only a cache).
    public static func load(path: String) -> SourceIndex? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path)) else { return nil }
        return try? JSONDecoder().decode(SourceIndex.self, from: data)
    }

    public func save(path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try encoder.encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

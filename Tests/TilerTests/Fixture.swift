import Foundation
import GeoGrid
import Logging
import Pyramid
import Raster
import Testing
import Tiler

/// Small imagery made on the fly, and helpers to compare pyramids with their sources.
enum Fixture {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let tmsDirectory = root + "/config/tms"

    static func temporaryDirectory() -> String {
        let dir = NSTemporaryDirectory() + "dallage-test-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// 25.6 m dalles of 512 px at 5 cm (two z22 tiles across), near Lille unless told otherwise.
    static func sample(
        in dir: String, columns: Int = 2, rows: Int = 2, dalleSize: Double = 25.6, resolution: Double = 0.05,
        crs: String = "EPSG:2154", format: SampleData.Format = .gtiff, origin: (Double, Double)? = nil
    ) throws -> [String] {
        var s = SampleData()
        s.columns = columns
        s.rows = rows
        s.dalleSize = dalleSize
        s.resolution = resolution
        s.crs = crs
        s.format = format
        if let origin { s.origin = origin }
        return try s.write(to: dir)
    }

    static func tile(
        _ sources: [String], id: String = "t", store: String, grids: [String], threads: Int = 2,
        overviews: Resampling = .average, configure: (inout TileOptions) -> Void = { _ in }
    ) throws -> TilingSummary {
        var options = TileOptions(store: store, tmsDirectory: tmsDirectory)
        options.threads = threads
        configure(&options)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try Tiler(
            definition: TilesetDefinition(id: id, sources: sources, grids: grids, overviewResampling: overviews),
            options: options, logger: logger,
            progress: Progress(logger: logger, interactive: false)
        ).run()
    }

    /// Waits, on the calling thread, until `condition` holds or `timeout` passes, asking every
    /// `interval`; false at the deadline. For a watcher that must react within milliseconds: call it
    /// on a thread of its own (`Blocking.onThreadOfItsOwn`), never on a busy pool.
    static func poll(
        timeout: TimeInterval, every interval: TimeInterval = 0.002, until condition: () -> Bool
    ) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else { return false }
            Thread.sleep(forTimeInterval: interval)
        }
        return true
    }

    static func grid(_ id: String) throws -> TileMatrixSet {
        try #require(try TileMatrixSetCatalog.load(directory: tmsDirectory).sets[id])
    }

    /// A mosaic of the sources through GDAL (gdalbuildvrt), the reference the pyramid must match.
    static func mosaic(_ sources: [String], in dir: String) throws -> Dataset {
        let vrt = dir + "/reference.vrt"
        try run("/usr/bin/gdalbuildvrt", ["-q", vrt] + sources)
        return try Dataset.open(vrt)
    }

    /// RGB of `box` read from `ds` at `resolution` (the box must fall on its pixel grid).
    static func read(_ ds: Dataset, box: BoundingBox, size: Int = 256) throws -> [UInt8] {
        let gt = try #require(ds.geoTransform)
        let x = Int(((box.minX - gt.originX) / gt.pixelWidth).rounded())
        let y = Int(((gt.originY - box.maxY) / -gt.pixelHeight).rounded())
        var out = [UInt8](repeating: 255, count: size * size * 4)
        try out.withUnsafeMutableBufferPointer { p in
            try ds.read(
                x: x, y: y, width: size, height: size, bands: [1, 2, 3], into: p.baseAddress!, bufferWidth: size,
                bufferHeight: size, pixelSpace: 4)
        }
        return out
    }

    /// GDAL's own reprojection of `sources` onto one tile, for comparison.
    static func warped(_ sources: [String], box: BoundingBox, crs: String, in dir: String) throws -> [UInt8] {
        let out = dir + "/warped-\(UUID().uuidString).tif"
        try run(
            "/usr/bin/gdalwarp",
            [
                "-q", "-t_srs", crs, "-te", "\(box.minX)", "\(box.minY)", "\(box.maxX)", "\(box.maxY)", "-ts", "256",
                "256", "-r", "bilinear", "-dstalpha",
            ] + sources + [out])
        let ds = try Dataset.open(out)
        var px = [UInt8](repeating: 0, count: 256 * 256 * 4)
        try px.withUnsafeMutableBufferPointer { p in
            try ds.read(
                x: 0, y: 0, width: 256, height: 256, bands: [1, 2, 3, 4], into: p.baseAddress!, bufferWidth: 256,
                bufferHeight: 256)
        }
        return px
    }

    /// Peak signal-to-noise ratio over RGB of the pixels valid in both (alpha ≥ 128), shifting `b` by (dx, dy).
    static func psnr(_ a: [UInt8], _ b: [UInt8], dx: Int = 0, dy: Int = 0, size: Int = 256) -> Double {
        var sum = 0.0
        var n = 0
        for y in max(0, -dy)..<min(size, size - dy) {
            for x in max(0, -dx)..<min(size, size - dx) {
                let i = (y * size + x) * 4
                let j = ((y + dy) * size + (x + dx)) * 4
                guard a[i + 3] >= 128, b[j + 3] >= 128 else { continue }
                for k in 0..<3 {
                    let d = Double(a[i + k]) - Double(b[j + k])
                    sum += d * d
                }
                n += 3
            }
        }
        guard n > 0 else { return 0 }
        let mse = sum / Double(n)
        return mse == 0 ? 99 : 10 * log10(255 * 255 / mse)
    }

    /// A tile at level `z` lying wholly inside `box`.
    static func tile(inside box: BoundingBox, z: Int, tms: TileMatrixSet) throws -> TileCoordinate {
        let range = try #require(tms.tiles(covering: box, z: z))
        return try #require(range.tiles.first { box.contains(tms.bounds(of: $0)) })
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String], environment: [String: String]? = nil) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        if let environment { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        try p.run()
        p.waitUntilExit()
        if tool.hasPrefix("/usr/bin/gdal") && p.terminationStatus != 0 {
            throw RasterError("\(tool) failed with status \(p.terminationStatus)")
        }
        return p.terminationStatus
    }

    /// The built `dallage` executable.
    static var executable: String {
        let candidates = [root + "/.build/debug/dallage", root + "/.build/release/dallage"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
    }
}

import Foundation
import GeoGrid
import Pyramid
import Raster
import TestSupport
import Testing

/// Writes a small shard by hand and reads it back with our reader and with GDAL.
@Suite(.blocking)
struct ShardWriterTests {
    static func makeShard(in dir: String, partial: Bool, parallelism: Int = 1) throws -> (String, ShardSummary) {
        let path = dir + "/shards/3/1/2.tif"
        let geometry = ShardGeometry(originX: 1000, originY: 2000, resolution: 0.5, levelCount: 3, epsg: 2154)
        let writer = try ShardWriter(path: path, geometry: geometry, format: .jpeg)
        let codec = try JPEGCodec()
        var pixels = [UInt8](repeating: 0, count: 256 * 256 * 4)
        for i in 0..<(256 * 256) {
            pixels[i * 4] = UInt8(i % 256)
            pixels[i * 4 + 1] = UInt8((i / 256) % 256)
            pixels[i * 4 + 2] = 128
        }
        let halfMask = try [UInt8]((0..<8192).map { $0 % 32 < 16 ? 0xFF : 0x00 }).withUnsafeBytes {
            try Deflate.compress($0)
        }
        for o in 0..<3 {
            let n = geometry.tilesPerSide(overview: o)
            for r in 0..<n {
                for c in 0..<n where !(o == 0 && r == 3 && c == 3) {
                    try pixels.withUnsafeBufferPointer { p in
                        try codec.encode(rgbx: p.baseAddress!, width: 256, height: 256, stride: 1024, quality: 80) {
                            jpeg in
                            if partial && o == 0 && c == 0 {
                                try halfMask.withUnsafeBytes {
                                    try writer.add(overview: o, col: c, row: r, tile: jpeg, mask: $0)
                                }
                            } else {
                                try writer.add(overview: o, col: c, row: r, tile: jpeg, mask: nil)
                            }
                        }
                    }
                }
            }
        }
        let summary = try #require(try writer.finish(parallelism: parallelism, parallelAbove: 0))
        return (path, summary)
    }

    /// A shard written by several threads at once (as the tiler writes a large one) is the same
    /// file, with the same checksum, as one written by one thread.
    @Test(arguments: [2, 3, 7]) func aShardWrittenInParallelIsTheSameFile(threads: Int) throws {
        let dir = NSTemporaryDirectory() + "dallage-shard-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (one, oneSummary) = try Self.makeShard(in: dir + "/one", partial: true)
        let (many, manySummary) = try Self.makeShard(in: dir + "/many", partial: true, parallelism: threads)
        let a = try Data(contentsOf: URL(fileURLWithPath: one))
        let b = try Data(contentsOf: URL(fileURLWithPath: many))
        #expect(a == b)
        #expect(manySummary == oneSummary)
        #expect(b.withUnsafeBytes { Deflate.crc32($0) } == manySummary.crc32)
        #expect(manySummary.bytes == b.count)
    }

    @Test func roundTripAndCOGLayout() throws {
        let dir = NSTemporaryDirectory() + "dallage-shard-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, summary) = try Self.makeShard(in: dir, partial: true)
        #expect(summary.tiles == 16 - 1 + 4 + 1)
        // No temporary file is left beside the shard.
        let names = try FileManager.default.contentsOfDirectory(atPath: (path as NSString).deletingLastPathComponent)
        #expect(names == ["2.tif"])

        let reader = try ShardReader(path: path)
        #expect(reader.images.map(\.width) == [1024, 512, 256])
        #expect(reader.masks.count == 3)
        #expect(reader.fileSize == summary.bytes)
        #expect(try reader.readAll().withUnsafeBytes { Deflate.crc32($0) } == summary.crc32)
        #expect(try reader.tile(overview: 0, col: 3, row: 3) == nil)
        let tile = try #require(try reader.tile(overview: 0, col: 1, row: 2))
        // A stored tile is a complete JPEG stream, decodable on its own.
        #expect(tile[0] == 0xFF && tile[1] == 0xD8 && tile[tile.count - 1] == 0xD9)
        #expect(try tile.withUnsafeBytes { try JPEGCodec().dimensions(of: $0) } == (256, 256))

        // GDAL reads it as an ordinary georeferenced image with overviews and a mask.
        let ds = try Dataset.open(path)
        #expect(ds.width == 1024 && ds.height == 1024 && ds.bandCount == 3)
        #expect(ds.overviewCount == 2)
        #expect(ds.geoTransform == GeoTransform(originX: 1000, originY: 2000, resolution: 0.5))
        #expect(ds.spatialReference?.epsg == 2154)
        #expect(ds.metadataItem("COMPRESSION", domain: "IMAGE_STRUCTURE") == "YCbCr JPEG")

        // GDAL's own COG validator accepts it.
        let validator = Process()
        validator.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        validator.arguments = ["-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff", "-q", path]
        try validator.run()
        validator.waitUntilExit()
        #expect(validator.terminationStatus == 0)
    }

    @Test func maskMakesPixelsTransparent() throws {
        let dir = NSTemporaryDirectory() + "dallage-shard-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, _) = try Self.makeShard(in: dir, partial: true)
        let ds = try Dataset.open(path)
        // Band "mask" through a VRT-free path: read RGBA via GDAL's mask flag using translate to MEM.
        let mem = try ds.translate(to: "", arguments: ["-of", "MEM", "-b", "1", "-b", "2", "-b", "3", "-b", "mask"])
        var px = [UInt8](repeating: 0, count: 4 * 256)
        try px.withUnsafeMutableBufferPointer { p in
            try mem.read(
                x: 0, y: 10, width: 256, height: 1, bands: [4], into: p.baseAddress!, bufferWidth: 256, bufferHeight: 1)
        }
        // Tile (0, 0) has its left 128 pixels valid, the right 128 transparent.
        #expect(px[0] == 255 && px[127] == 255 && px[128] == 0 && px[255] == 0)
        try px.withUnsafeMutableBufferPointer { p in
            try mem.read(
                x: 1023, y: 1023, width: 1, height: 1, bands: [4], into: p.baseAddress!, bufferWidth: 1, bufferHeight: 1
            )
        }
        #expect(px[0] == 0)  // the absent tile
        try px.withUnsafeMutableBufferPointer { p in
            try mem.read(
                x: 300, y: 10, width: 1, height: 1, bands: [4], into: p.baseAddress!, bufferWidth: 1, bufferHeight: 1)
        }
        #expect(px[0] == 255)  // a full tile
    }

    @Test func truncatedShardIsReportedNotCrashing() throws {
        let dir = NSTemporaryDirectory() + "dallage-shard-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, summary) = try Self.makeShard(in: dir, partial: false)
        truncate(path, off_t(summary.bytes / 2))
        let reader = try ShardReader(path: path)
        #expect(throws: ShardError.self) { _ = try reader.tile(overview: 0, col: 3, row: 2) }
        truncate(path, 100)
        #expect(throws: ShardError.self) { _ = try ShardReader(path: path) }
    }

    /// A shard cut short after it was opened (a disk repair, a careless copy over it): the tiles
    /// it lost throw — a mapping would have killed the process with SIGBUS — and the tiles still
    /// there read back the same bytes; grown back in place, it reads whole again.
    @Test func shardTruncatedAfterOpeningThrowsAndRecovers() throws {
        let dir = NSTemporaryDirectory() + "dallage-shard-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, summary) = try Self.makeShard(in: dir, partial: false)
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        let reader = try ShardReader(path: path)
        // The full-resolution tiles by where their bytes lie: the first stays, the last is cut off.
        let tiles = try (0..<16).compactMap { i in
            try reader.tileRange(overview: 0, col: i % 4, row: i / 4).map { (i % 4, i / 4, $0) }
        }.sorted { $0.2.offset < $1.2.offset }
        let (first, last) = (try #require(tiles.first), try #require(tiles.last))
        let before = try #require(try reader.tile(overview: 0, col: last.0, row: last.1))
        #expect(truncate(path, off_t(last.2.offset)) == 0)
        #expect(throws: ShardError.self) { _ = try reader.tile(overview: 0, col: last.0, row: last.1) }
        #expect(try reader.tile(overview: 0, col: first.0, row: first.1)?.count == first.2.count)
        try original.write(to: URL(fileURLWithPath: path))
        #expect(try reader.tile(overview: 0, col: last.0, row: last.1) == before)
        #expect(original.count == summary.bytes)
    }
}

import Foundation
import GeoGrid
import Raster
import Synchronization
import TestSupport
import Testing

@testable import Tiler

/// JPEG 2000 dalles are decoded once per block for all workers, and read as the mosaic reads them.
@Suite(.blocking) struct DecodedBlocksTests {
    /// 2×2 JPEG 2000 dalles of 512 px in blocks of 128 px, the first with an alpha band, placed
    /// off the grid's tiles so that blocks straddle the reads of 256-px tiles.
    static func dalles(in dir: String, block: Int = 128) throws -> [SourceEntry] {
        let tiffs = try Fixture.sample(in: dir + "/tif", origin: (704_003.2, 7_060_001.6))
        return try tiffs.sorted().enumerated().map { i, tif in
            let name = ((tif as NSString).lastPathComponent as NSString).deletingPathExtension
            let jp2 = dir + "/\(name).jp2"
            let bands = i == 0 ? ["-b", "1", "-b", "2", "-b", "3", "-b", "mask"] : []
            try Fixture.run(
                "/usr/bin/gdal_translate",
                ["-q", "-of", "JP2OpenJPEG", "-co", "QUALITY=25", "-co", "REVERSIBLE=NO", "-co", "BLOCKXSIZE=\(block)"]
                    + ["-co", "BLOCKYSIZE=\(block)"] + bands + [tif, jp2])
            let size = try #require(try FileManager.default.attributesOfItem(atPath: jp2)[.size] as? Int)
            let e = SourceIndex.inspect(path: jp2, size: size, mtime: 0)
            #expect(e.error == nil && e.blockWidth == block && e.bands == (i == 0 ? 4 : 3))
            return e
        }
    }

    /// Every `tiles`×`tiles` block of level `z` over the dalles, read by `workers` readers on as
    /// many threads sharing `decoded` (nil: through the mosaic), in order; the pixels of each.
    static func readAll(
        _ entries: [SourceEntry], grid: String, z: Int, tiles: Int, decoded: DecodedBlocks?, workers: Int = 1
    ) throws -> [[UInt8]] {
        let tms = try Fixture.grid(grid)
        let plan = try Planner.plan(grid: tms, sources: entries, minZoom: nil, maxZoom: nil)
        let area = plan.footprints.dropFirst().reduce(plan.footprints[0]) { $0.union($1) }
        let covering = try #require(tms.tiles(covering: area, z: z))
        let ranges = stride(from: covering.minRow, through: covering.maxRow, by: tiles).flatMap { row in
            stride(from: covering.minCol, through: covering.maxCol, by: tiles).map { col in
                TileRange(z: z, minCol: col, minRow: row, maxCol: col + tiles - 1, maxRow: row + tiles - 1)
            }
        }
        let footprints = RectIndex(Array(zip(plan.footprints, entries)))
        let results = Mutex([[UInt8]](repeating: [], count: ranges.count))
        let failure = Mutex<(any Error)?>(nil)
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            do {
                let reader = try DalleReader(
                    tms: tms, footprints: footprints, resampling: .bilinear, bad: BadDalles(), decoded: decoded)
                try reader.begin(area: area.expanded(by: 100))
                let canvas = Canvas(side: tiles * 256)
                for i in stride(from: worker, to: ranges.count, by: workers) {
                    canvas.clear()
                    let any = try reader.read(ranges[i], into: canvas)
                    let pixels =
                        any ? Array(UnsafeBufferPointer(start: canvas.pixels, count: canvas.side * canvas.stride)) : []
                    results.withLock { $0[i] = pixels }
                }
            } catch {
                failure.withLock { $0 = error }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        return results.withLock { $0 }
    }

    @Test func eachBlockIsDecodedOnceByTwoWorkersAndCopiedAsTheMosaicReadsIt() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let entries = try Self.dalles(in: dir)
        let blocks = entries.count * 16
        // z22 of 2154_5cm is the dalles' own pixel grid: reads are copies, 256-px tiles across 128-px blocks.
        let mosaic = try Self.readAll(entries, grid: "2154_5cm", z: 22, tiles: 1, decoded: nil)
        #expect(mosaic.filter { !$0.isEmpty }.count >= 16)
        let decoded = DecodedBlocks(budget: 1 << 30)
        let shared = try Self.readAll(entries, grid: "2154_5cm", z: 22, tiles: 1, decoded: decoded, workers: 2)
        #expect(shared == mosaic)
        #expect(decoded.decodes == blocks)
        // Every block was dropped after the last read that needed it.
        #expect(decoded.bytesHeld == 0 && decoded.droppedEarly == 0)

        // Web Mercator: the blocks under each warped tile, each decoded once, kept within the budget.
        let warpedMosaic = try Self.readAll(entries, grid: "PM", z: 21, tiles: 1, decoded: nil)
        let warpedBlocks = DecodedBlocks(budget: 1 << 30)
        let warped = try Self.readAll(entries, grid: "PM", z: 21, tiles: 1, decoded: warpedBlocks, workers: 2)
        #expect(warped == warpedMosaic)
        #expect(warped.filter { !$0.isEmpty }.count >= 16)
        #expect(warpedBlocks.decodes == blocks)
    }

    /// Passes reads on to a dalle reader and records the ranges asked for.
    final class RecordingReader: LeafReader {
        let reader: DalleReader
        var ranges: [TileRange] = []
        init(_ reader: DalleReader) { self.reader = reader }
        func begin(shard: TileCoordinate) throws { try reader.begin(shard: shard) }
        func mayHaveData(_ range: TileRange) -> Bool { reader.mayHaveData(range) }
        func read(_ range: TileRange, into canvas: Canvas) throws -> Bool {
            ranges.append(range)
            return try reader.read(range, into: canvas)
        }
    }

    /// Web Mercator warps every read, so no read knows how many others take a block: the reads
    /// are counted ahead, shard by shard with the shards around, and each block is decoded once and
    /// dropped after its last read, even where shards of two workers meet on it (2 levels a band:
    /// shards of 512 px built whole, nine of them over the dalles; 5 levels: shards in parts).
    @Test(arguments: [2, 5]) func warpedReadsCountedAheadDecodeEachBlockOnceAndKeepNoneAfter(levelsPerBand: Int) throws
    {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let entries = try Self.dalles(in: dir)
        let tms = try Fixture.grid("PM")
        let plan = try Planner.plan(
            grid: tms, sources: entries, minZoom: nil, maxZoom: nil, levelsPerBand: levelsPerBand)
        let band = plan.scheme.bands[0]
        let shards = plan.shards[0]
        #expect(levelsPerBand == 5 || shards.count >= 4)
        let footprints = RectIndex(Array(zip(plan.footprints, entries)))
        let decoded = DecodedBlocks(budget: 1 << 30)
        let readPlan = ReadPlan(shards: Set(shards), band: band, decoded: decoded)
        let parts = ShardBuilder.partsPerSide(band)
        let failure = Mutex<(any Error)?>(nil)
        let unplanned = Mutex<[TileRange]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { worker in
            do {
                let reader = RecordingReader(
                    try DalleReader(
                        tms: tms, footprints: footprints, resampling: .bilinear, bad: BadDalles(), decoded: decoded,
                        plan: readPlan))
                let builder = try ShardBuilder(tms: tms, band: band, format: .jpeg, quality: 85, reader: reader)
                for (i, shard) in shards.enumerated() where i % 2 == worker {
                    let job = ShardJob(
                        shard: shard, writer: try builder.makeWriter(shard: shard, path: dir + "/\(i).tif"),
                        partsPerSide: parts, previous: nil, area: nil)
                    reader.ranges = []
                    if parts == 1 {
                        _ = try builder.buildWhole(job)
                    } else {
                        for p in 0..<parts * parts { _ = try builder.buildPart(job, part: p) }
                    }
                    // The reads counted ahead are the builder's.
                    let planned = Set(ShardBuilder.deepestReads(of: shard, band: band))
                    unplanned.withLock { $0 += reader.ranges.filter { !planned.contains($0) } }
                }
            } catch {
                failure.withLock { $0 = error }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        #expect(unplanned.withLock { $0 }.isEmpty)
        #expect(decoded.decodes == entries.count * 16)
        #expect(decoded.bytesHeld == 0 && decoded.droppedEarly == 0 && decoded.expectedBlocks == 0)
    }

    @Test func aTruncatedDalleIsStillFoundAtIndexingWhereBlocksAreCheckedAtTheCoarsestLevel() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Blocks of 256 px: the dalles have a coarser level (GDAL shows levels of 128 px blocks or more).
        let whole = try Self.dalles(in: dir, block: 256)[1]
        #expect(whole.error == nil && whole.overviews > 0)
        let data = try Data(contentsOf: URL(fileURLWithPath: whole.path))
        let truncated = dir + "/truncated.jp2"
        try data.prefix(data.count * 3 / 4).write(to: URL(fileURLWithPath: truncated))
        let e = SourceIndex.inspect(path: truncated, size: data.count * 3 / 4, mtime: 0)
        #expect(e.error?.isEmpty == false)
    }

    @Test func aBudgetSmallerThanARowOfBlocksKeepsMemoryBoundedAndThePixelsTheSame() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let entries = try Self.dalles(in: dir)
        let mosaic = try Self.readAll(entries, grid: "2154_5cm", z: 22, tiles: 1, decoded: nil)
        let block = 128 * 128 * 4
        let decoded = DecodedBlocks(budget: 3 * block)
        let tight = try Self.readAll(entries, grid: "2154_5cm", z: 22, tiles: 1, decoded: decoded)
        #expect(tight == mosaic)
        // Blocks dropped before their last read were decoded again; no more than the budget stayed.
        #expect(decoded.droppedEarly > 0 && decoded.decodes > entries.count * 16)
        #expect(decoded.bytesHeld <= 3 * block)
    }
}

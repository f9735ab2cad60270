import Foundation
import GeoGrid
import Pyramid
import Raster
import TestSupport
import Testing
import Tiler

@Suite(.serialized, .blocking)
struct TilerTests {
    @Test func nativeLevelIsThePixelsOfTheSource() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src")
        let summary = try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        #expect(summary.skipped.isEmpty)
        let grid = try #require(summary.grids.first)
        #expect(grid.maxZoom == 22 && grid.minZoom == 0)
        #expect(grid.failed.isEmpty && grid.tiles > 0)

        let pyramid = try PyramidReader(directory: dir + "/store/t/2154_5cm")
        let tms = try Fixture.grid("2154_5cm")
        let mosaic = try Fixture.mosaic(sources, in: dir)
        let footprint = try #require(mosaic.geoTransform).bounds(width: mosaic.width, height: mosaic.height)
        // Every z22 tile inside the area, including those across dalle borders, equals the sources.
        let range = try #require(tms.tiles(covering: footprint, z: 22))
        var compared = 0
        for t in range.tiles where footprint.contains(tms.bounds(of: t)) {
            let tile = try #require(try pyramid.decodeTile(t))
            let source = try Fixture.read(mosaic, box: tms.bounds(of: t))
            #expect(Fixture.psnr(tile, source) >= 38, "tile \(t)")
            #expect(tile.enumerated().allSatisfy { $0.offset % 4 != 3 || $0.element == 255 })
            compared += 1
        }
        #expect(compared >= 4)

        // Every shard passes GDAL's COG validator and `validate`.
        for shard in pyramid.manifest.shards {
            let status = try Fixture.run(
                "/usr/bin/python3",
                [
                    "-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff", "-q",
                    dir + "/store/t/2154_5cm/" + shard.path,
                ])
            #expect(status == 0, "\(shard.path)")
        }
        let (checked, problems) = try PyramidValidator.validate(directory: dir + "/store/t/2154_5cm")
        #expect(checked == pyramid.manifest.shards.count && problems.isEmpty)
    }

    @Test func coverageEdgesAreTransparentWithoutFringes() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 1, rows: 1, origin: (704_000, 7_060_000))
        _ = try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        let pyramid = try PyramidReader(directory: dir + "/store/t/2154_5cm")
        let tms = try Fixture.grid("2154_5cm")
        let mosaic = try Fixture.mosaic(sources, in: dir)
        // The dalle's top edge (y = 7 060 000) cuts z22 tiles in half: 128 rows outside, 128 inside.
        let top = tms.tiles(
            covering: BoundingBox(minX: 704_000, minY: 7_059_999, maxX: 704_001, maxY: 7_060_000), z: 22)
        let t = try #require(top?.tiles.first)
        #expect(abs(tms.bounds(of: t).maxY - 7_060_006.4) < 1e-6)
        let tile = try #require(try pyramid.decodeTile(t))
        for y in [0, 64, 127] { #expect(tile[(y * 256 + 10) * 4 + 3] == 0, "row \(y) is outside") }
        for y in [128, 200, 255] { #expect(tile[(y * 256 + 10) * 4 + 3] == 255, "row \(y) is inside") }
        // Inside pixels next to the edge keep the source's colours (no black or white fringe).
        var source = [UInt8](repeating: 0, count: 256 * 256 * 4)
        let lower = try Fixture.read(
            mosaic, box: BoundingBox(minX: 704_000, minY: 7_059_987.2, maxX: 704_012.8, maxY: 7_060_000))
        for i in 0..<(128 * 256 * 4) { source[128 * 256 * 4 + i] = lower[i] }
        #expect(Fixture.psnr(tile, source) >= 36)
        // A tile wholly outside is absent, at every level.
        #expect(try pyramid.tileData(TileCoordinate(z: 22, col: t.col, row: t.row - 1)) == nil)
        // Overviews keep transparency: z15 tile holding the dalle is partly masked.
        let z15 = try #require(try pyramid.decodeTile(t.ancestor(levels: 7)))
        let alphas = Set(stride(from: 3, to: z15.count, by: 4).map { z15[$0] })
        #expect(alphas == [0, 255])
    }

    @Test func webMercatorTilesAreWhereGDALPutsThem() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 2, rows: 2, dalleSize: 51.2)
        let summary = try Fixture.tile(sources, store: dir + "/store", grids: ["PM"])
        #expect(summary.grids.first?.maxZoom == 21)
        let pyramid = try PyramidReader(directory: dir + "/store/t/PM")
        let tms = try Fixture.grid("PM")
        // The shard, opened by GDAL, is georeferenced on the grid (within half a pixel).
        let shard = try #require(pyramid.manifest.shards.first { $0.z == 14 })
        let ds = try Dataset.open(dir + "/store/t/PM/" + shard.path)
        let gt = try #require(ds.geoTransform)
        let expected = tms.bounds(of: shard.coordinate)
        let cell = tms.tileMatrices[21].cellSize
        #expect(abs(gt.originX - expected.minX) < cell / 2 && abs(gt.originY - expected.maxY) < cell / 2)
        #expect(abs(gt.pixelWidth - cell) < 1e-9)
        #expect(ds.spatialReference?.epsg == 3857)

        // Pixels: a z21 tile inside the area matches GDAL's own bilinear warp, and is best aligned
        // with no shift (a one-pixel shift would lower the match).
        let wgs = try SpatialReference.wgs84()
        let l93 = try SpatialReference(epsg: 2154)
        let pm = try SpatialReference(epsg: 3857)
        let mosaic = try Fixture.mosaic(sources, in: dir)
        let area = try CoordinateTransform(from: l93, to: pm).transform(
            try #require(mosaic.geoTransform).bounds(width: mosaic.width, height: mosaic.height).expanded(by: -5))
        _ = wgs
        let t = try Fixture.tile(inside: area, z: 21, tms: tms)
        let ours = try #require(try pyramid.decodeTile(t))
        let gdal = try Fixture.warped(sources, box: tms.bounds(of: t), crs: "EPSG:3857", in: dir)
        let aligned = Fixture.psnr(ours, gdal)
        #expect(aligned >= 32)
        for (dx, dy) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
            #expect(Fixture.psnr(ours, gdal, dx: dx, dy: dy) < aligned - 1)
        }
    }

    @Test func conicConformalAndJPEG2000SourcesAreTiled() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // CC49 dalles land in Lambert-93 where GDAL puts them.
        let cc49 = try Fixture.sample(in: dir + "/cc49", columns: 1, rows: 1, dalleSize: 51.2, crs: "EPSG:3949")
        _ = try Fixture.tile(cc49, id: "cc", store: dir + "/store", grids: ["2154_5cm"])
        let tms = try Fixture.grid("2154_5cm")
        let cc = try PyramidReader(directory: dir + "/store/cc/2154_5cm")
        let src = try Dataset.open(cc49[0])
        let box = try CoordinateTransform(from: try SpatialReference(epsg: 3949), to: try SpatialReference(epsg: 2154))
            .transform(try #require(src.geoTransform).bounds(width: src.width, height: src.height)).expanded(by: -3)
        let t = try Fixture.tile(inside: box, z: 22, tms: tms)
        let ours = try #require(try cc.decodeTile(t))
        let gdal = try Fixture.warped(cc49, box: tms.bounds(of: t), crs: "EPSG:2154", in: dir)
        #expect(Fixture.psnr(ours, gdal) >= 32)

        // JPEG 2000 dalles are read through OpenJPEG and copied pixel for pixel.
        let jp2 = try Fixture.sample(in: dir + "/jp2", columns: 1, rows: 1, format: .jp2)
        #expect(jp2[0].hasSuffix("-LA93-0M05-RVB.jp2"))
        _ = try Fixture.tile(jp2, id: "jp2", store: dir + "/store", grids: ["2154_5cm"])
        let j = try PyramidReader(directory: dir + "/store/jp2/2154_5cm")
        let jds = try Dataset.open(jp2[0])
        let jbox = try #require(jds.geoTransform).bounds(width: jds.width, height: jds.height)
        let jt = try Fixture.tile(inside: jbox, z: 22, tms: tms)
        let decoded = try #require(try j.decodeTile(jt))
        let reference = try Fixture.read(jds, box: tms.bounds(of: jt))
        // Lossy JPEG 2000 leaves artefacts that cost JPEG q85 a few dB (GDAL's own q85 gets 33 dB
        // on this dalle); a one-pixel shift scores clearly lower.
        let aligned = Fixture.psnr(decoded, reference)
        #expect(aligned >= 32)
        #expect(Fixture.psnr(decoded, reference, dx: 1) < aligned - 2)
    }

    @Test func corruptDallesAreReportedAndSkipped() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var sources = try Fixture.sample(in: dir + "/src", columns: 2, rows: 1)
        let garbage = dir + "/src/2024-0000000-00000000-LA93-0M05-RVB.tif"
        try Data(repeating: 0x42, count: 5000).write(to: URL(fileURLWithPath: garbage))
        let truncated = dir + "/src/truncated.tif"
        let whole = try Data(contentsOf: URL(fileURLWithPath: sources[0]))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: truncated))
        sources += [garbage, truncated, dir + "/src/missing.tif"]
        let summary = try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        let skipped = Dictionary(
            uniqueKeysWithValues: summary.skipped.map { (($0.path as NSString).lastPathComponent, $0.reason) })
        #expect(skipped.count == 3)
        #expect(skipped["missing.tif"] == "file not found")
        #expect(skipped[(garbage as NSString).lastPathComponent]?.isEmpty == false)
        #expect(skipped["truncated.tif"]?.isEmpty == false)
        // The good dalles were tiled all the same.
        #expect(summary.sources == 2)
        #expect((summary.grids.first?.tiles ?? 0) > 0)

        // The command line names them and exits non-zero unless --keep-going.
        let cli = Fixture.executable
        let status = try Fixture.run(
            cli,
            ["tile", "--id", "c", "--tms", "2154_5cm", "--store", dir + "/store", "--tms-dir", Fixture.tmsDirectory]
                + sources)
        #expect(status == 1)
        let kept = try Fixture.run(
            cli,
            [
                "tile", "--id", "c", "--tms", "2154_5cm", "--store", dir + "/store", "--tms-dir", Fixture.tmsDirectory,
                "--keep-going",
            ]
                + sources)
        #expect(kept == 0)
    }

    /// Dalles readable but georeferenced wrongly — Lambert-93 metres tagged as degrees, placed a
    /// hundred times too far, a pixel size off by ten powers — are skipped with the reason, as
    /// unreadable ones are; the pyramid's limits are those of the good dalles alone.
    @Test func misgeoreferencedDallesAreSkippedWithoutStretchingThePyramid() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = try Fixture.sample(in: dir + "/src", columns: 2, rows: 1)
        let alone = try Fixture.tile(good, store: dir + "/alone", grids: ["2154_5cm", "PM"])
        #expect(alone.skipped.isEmpty)
        let bad: [(String, [String])] = [
            ("degrees.tif", ["-a_srs", "EPSG:4326"]),
            ("far.tif", ["-a_ullr", "70000000", "700000000", "70000025.6", "699999974.4"]),
            ("huge.tif", ["-a_ullr", "0", "1e12", "1e12", "0"]),
        ]
        for (name, options) in bad {
            try Fixture.run("/usr/bin/gdal_translate", ["-q"] + options + [good[0], dir + "/src/" + name])
        }
        let summary = try Fixture.tile(
            good + bad.map { dir + "/src/" + $0.0 }, store: dir + "/store", grids: ["2154_5cm", "PM"])
        let skipped = Dictionary(
            uniqueKeysWithValues: summary.skipped.map { (($0.path as NSString).lastPathComponent, $0.reason) })
        #expect(Set(skipped.keys) == Set(bad.map(\.0)))
        #expect(skipped["degrees.tif"]?.contains("cannot be placed in grid") == true, "\(skipped)")
        #expect(skipped["far.tif"]?.contains("is not inside grid 2154_5cm's extent") == true, "\(skipped)")
        #expect(skipped["huge.tif"]?.contains("is not inside grid") == true, "\(skipped)")
        #expect(summary.sources == 2)
        for grid in ["2154_5cm", "PM"] {
            let m = try PyramidManifest.load(directory: dir + "/store/t/\(grid)")
            let reference = try PyramidManifest.load(directory: dir + "/alone/t/\(grid)")
            #expect(m.bounds == reference.bounds && m.levels == reference.levels, "\(grid)")
        }
    }

    @Test func nearestOverviewsNeverBlendPixelsAtAnyLevel() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A black and white pattern that nearest halving keeps as it is at every level: pixel X of
        // a level (counted from the grid's origin) is white when h(X) ≠ h(Y), with h(X) the bit
        // above X's lowest set bit, which doubling X does not change. Averaging makes greys.
        func h(_ v: Int) -> Int { v == 0 ? 0 : (v >> (v.trailingZeroBitCount + 1)) & 1 }
        let path = dir + "/pattern.tif"
        let script = """
            import numpy as np
            from osgeo import gdal, osr
            def h(v):
                low = v & -v
                return np.where(v == 0, 0, (v // np.maximum(low, 1) // 2) & 1)
            n = 4096
            x0, y0 = 704000 * 20, (12000000 - 7060000) * 20
            hx, hy = h(np.arange(x0, x0 + n)), h(np.arange(y0, y0 + n))
            grey = (255 * (hy[:, None] ^ hx[None, :])).astype(np.uint8)
            ds = gdal.GetDriverByName('GTiff').Create('\(path)', n, n, 3, gdal.GDT_Byte)
            ds.SetGeoTransform((704000, 0.05, 0, 7060000, 0, -0.05))
            srs = osr.SpatialReference(); srs.ImportFromEPSG(2154); ds.SetProjection(srs.ExportToWkt())
            for b in (1, 2, 3): ds.GetRasterBand(b).WriteArray(grey)
            ds = None
            """
        #expect(try Fixture.run("/usr/bin/python3", ["-c", script]) == 0)
        let tms = try Fixture.grid("2154_5cm")
        let centre = BoundingBox(minX: 704_102, minY: 7_059_898, maxX: 704_102.1, maxY: 7_059_898.1)
        /// Mean distance to the pattern over the opaque pixels of the tile at the dalle's centre.
        func error(_ pyramid: PyramidReader, z: Int) throws -> Double {
            let t = try #require(tms.tiles(covering: centre, z: z)?.tiles.first)
            let tile = try #require(try pyramid.decodeTile(t), "z\(z)")
            var (sum, n) = (0, 0)
            for y in 0..<256 {
                for x in 0..<256 where tile[(y * 256 + x) * 4 + 3] == 255 {
                    let expected = h(t.col * 256 + x) != h(t.row * 256 + y) ? 255 : 0
                    sum += abs(Int(tile[(y * 256 + x) * 4 + 1]) - expected)
                    n += 1
                }
            }
            return Double(sum) / Double(max(n, 1))
        }
        for (resampling, store) in [(Resampling.nearest, "/nearest"), (.average, "/average")] {
            let summary = try Fixture.tile([path], store: dir + store, grids: ["2154_5cm"], overviews: resampling)
            #expect(summary.grids.first?.failed.isEmpty == true)
            let pyramid = try PyramidReader(directory: dir + store + "/t/2154_5cm")
            // z21…z15 come from the deepest band (z19 tops its parts, z18 is their merge), z14
            // from the band above.
            for z in [22, 21, 19, 18, 15, 14] {
                let e = try error(pyramid, z: z)
                if resampling == .nearest || z == 22 {
                    #expect(e < 40, "z\(z) \(resampling): off the pattern by \(e)")
                } else {
                    #expect(e > 60, "z\(z) average: \(e) from the pattern")
                }
            }
        }
    }

    @Test func tilesetFilesSpellPublicationAsManifestsDo() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func load(_ publish: String) throws -> TilesetDefinition {
            let path = dir + "/t.yaml"
            try "id: t\nsources: [src/*.tif]\npublish: \(publish)\n".write(
                toFile: path, atomically: true, encoding: .utf8)
            return try TilesetDefinition.load(path: path)
        }
        #expect(try load("by-status").publish == .byStatus)
        #expect(try load("all").publish == .all)
        do {
            _ = try load("by_status")
            Issue.record("a tileset publishing 'by_status' was accepted")
        } catch {
            #expect("\(error)".contains("publish must be all or by-status, not 'by_status'"), "\(error)")
        }
    }

    @Test func dryRunWritesNothingAndPlansOnlyWhereDallesAre() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Two dalles 5 km apart: the plan covers two shards, not the 5 km box between them.
        var sources = try Fixture.sample(in: dir + "/src", columns: 1, rows: 1, origin: (704_000, 7_060_000))
        sources += try Fixture.sample(in: dir + "/src", columns: 1, rows: 1, origin: (709_000, 7_055_000))
        let summary = try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm", "PM"]) { $0.dryRun = true }
        #expect(summary.plans.map { $0.shards[0].count } == [2, 2])
        #expect(summary.grids.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: dir + "/store/t/2154_5cm"))
    }
}

@Suite(.serialized, .blocking)
struct ResumeTests {
    @Test func killedIncrementalRunResumesToWhatACleanRunMakes() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Four shards, then a tranche of one dalle in each: an incremental build of four shards
        // in the deepest band, one after the other (one thread), then the bands above.
        let first = try GenerationTests.fourShards(in: dir)
        let tranche = try (0..<4).flatMap { i in
            let origin = (704_025.6 + Double(i % 2) * 2000, 7_060_000 - Double(i / 2) * 2000)
            return try Fixture.sample(in: dir + "/tranche\(i)", columns: 1, rows: 1, origin: origin)
        }
        for store in ["a", "b"] {
            _ = try await Blocking.run {
                try Fixture.tile(first, store: dir + "/" + store, grids: ["2154_5cm"], threads: 1)
            }
        }
        let reference = try await Blocking.run {
            try Fixture.tile(first + tranche, store: dir + "/a", grids: ["2154_5cm"], threads: 1)
        }
        #expect(reference.grids[0].shardsReused == 0)
        #expect(reference.updates[0].rebuild[0].count == 4)
        let total = reference.grids[0].shardsBuilt

        // The same run, killed with SIGKILL as soon as its first shard is recorded (watched from a
        // thread of its own every 2 ms: a shard takes far longer); on a machine so loaded that the
        // run still gets to its end first, it is tried again.
        let folder = PyramidFolder(dir + "/b/t/2154_5cm")
        var atKill = 0
        for _ in 0..<3 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Fixture.executable)
            p.arguments =
                [
                    "tile", "--id", "t", "--tms", "2154_5cm", "--threads", "1", "--store", dir + "/b", "--tms-dir",
                    Fixture.tmsDirectory,
                ] + first + tranche
            p.standardError = FileHandle.nullDevice
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            atKill = try await Blocking.onThreadOfItsOwn {
                // The first record, or the run's end (then the test tries again).
                let seen = Fixture.poll(timeout: 120) { !p.isRunning || !folder.records().isEmpty }
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                guard seen else { return 0 }
                p.waitUntilExit()
                return p.terminationReason == .uncaughtSignal ? folder.records().count : total
            }
            if atKill >= 1 && atKill < total { break }
            // Finished (or never started): back to generation 1 for another try.
            if try folder.current()?.generation == 2 { try folder.rollback(to: 1) }
        }
        try #require(atKill >= 1 && atKill < total, "no run could be killed midway (\(atKill) of \(total) shards)")
        #expect(try folder.current()?.generation ?? 0 < 3)
        let base = try #require(try folder.current()?.generation)

        // Resuming redoes only what was not finished and ends with the shards a clean run made.
        let resumed = try await Blocking.run {
            try Fixture.tile(first + tranche, store: dir + "/b", grids: ["2154_5cm"], threads: 1) { $0.resume = true }
        }
        let grid = try #require(resumed.grids.first)
        #expect(grid.shardsResumed >= atKill && grid.shardsBuilt == total - grid.shardsResumed)
        let a = try PyramidManifest.load(directory: dir + "/a/t/2154_5cm")
        let b = try PyramidManifest.load(directory: dir + "/b/t/2154_5cm")
        if base == 1 {
            #expect(a.shards == b.shards)
            #expect(a.generation == b.generation)
        }
        #expect(
            Set(a.shards.map { "\($0.z)/\($0.col)/\($0.row) \($0.crc32) \($0.bytes)" })
                == Set(b.shards.map { "\($0.z)/\($0.col)/\($0.row) \($0.crc32) \($0.bytes)" }))
        // No half-written file is left with any name, and the records went with the switch.
        let leftovers =
            FileManager.default.enumerator(atPath: dir + "/b")?.allObjects.compactMap { $0 as? String }
            .filter { ($0 as NSString).lastPathComponent.hasPrefix(".") && !$0.hasSuffix(".lock") } ?? []
        #expect(leftovers.isEmpty)
        #expect(folder.records().isEmpty)
    }

    @Test func resumingAgainstChangedSourcesIsRefused() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        // The records an interrupted run of these sources left.
        let folder = PyramidFolder(dir + "/store/t/2154_5cm")
        try folder.record(
            ShardRecord(plan: "0badc0de", path: nil, bytes: 0, crc32: "00000000", tiles: 0, copied: 0, encoded: 0),
            for: TileCoordinate(z: 15, col: 1, row: 1))
        #expect {
            try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"]) { $0.resume = true }
        } throws: { "\($0)".contains("changed since the interrupted run") }
        #expect(try folder.current() == nil)
    }
}

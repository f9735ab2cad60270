import Foundation
import GeoGrid
import Pyramid
import Raster
import TestSupport
import Testing

@testable import Tiler

/// Tranches: a pyramid built again after dalles were added, replaced or removed rebuilds only the
/// shards they reach, copies what they do not, and switches generations atomically.
@Suite(.blocking) struct GenerationTests {
    /// Four dalles 2 km apart: four shards in the deepest band (z22→15 of 2154_5cm).
    static func fourShards(in dir: String) throws -> [String] {
        try (0..<4).flatMap { i in
            let origin = (704_000 + Double(i % 2) * 2000, 7_060_000 - Double(i / 2) * 2000)
            return try Fixture.sample(in: dir + "/src\(i)", columns: 1, rows: 1, origin: origin)
        }
    }

    /// A dalle beside the first of `fourShards` (in its shard), 25.6 m east.
    static func neighbour(in dir: String) throws -> [String] {
        try Fixture.sample(in: dir + "/new", columns: 1, rows: 1, origin: (704_025.6, 7_060_000))
    }

    /// Each listed shard's file as the file system sees it: a rewritten file changes inode or date.
    struct FileState: Equatable {
        var path: String
        var crc32: String
        var inode: UInt64
        var modified: Double
    }

    static func files(_ pyramid: String) throws -> [TileCoordinate: FileState] {
        let m = try #require(try PyramidFolder(pyramid).current())
        var out: [TileCoordinate: FileState] = [:]
        for s in m.shards {
            var st = stat()
            try #require(stat(pyramid + "/" + s.path, &st) == 0, "\(s.path) is missing")
            out[s.coordinate] = FileState(
                path: s.path, crc32: s.crc32, inode: UInt64(st.st_ino),
                modified: Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
        }
        return out
    }

    /// Every stored tile of every level, with its mask, as `PyramidReader` reads them.
    static func tiles(_ pyramid: String) throws -> [TileCoordinate: [UInt8]] {
        let reader = try PyramidReader(directory: pyramid)
        var out: [TileCoordinate: [UInt8]] = [:]
        for l in reader.manifest.levels {
            for row in l.minRow...l.maxRow {
                for col in l.minCol...l.maxCol {
                    let t = TileCoordinate(z: l.z, col: col, row: row)
                    let bytes = try reader.withTileAndMask(t) { b, m in Array(b) + (m.map { Array($0) } ?? []) }
                    if let bytes { out[t] = bytes }
                }
            }
        }
        return out
    }

    static func footprint(_ dalle: String) throws -> BoundingBox {
        let ds = try Dataset.open(dalle)
        let gt = try #require(ds.geoTransform)
        return gt.bounds(width: ds.width, height: ds.height)
    }

    /// Whether a tile reaches `box` widened by the margin the tiler gives a changed dalle.
    static func near(_ t: TileCoordinate, _ box: BoundingBox, tms: TileMatrixSet) -> Bool {
        tms.bounds(of: t).intersects(box.expanded(by: 4 * 0.05))
    }

    @Test func aNewTrancheRebuildsOnlyTheShardsItReaches() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try Self.fourShards(in: dir)
        let added = try Self.neighbour(in: dir)
        let pyramid = dir + "/store/t/2154_5cm"
        let one = try await Blocking.run {
            try Fixture.tile(first, store: dir + "/store", grids: ["2154_5cm"])
        }
        #expect(one.grids[0].generation == 1)
        let before = try Self.files(pyramid)
        let tilesBefore = try Self.tiles(pyramid)
        #expect(before.keys.filter { $0.z == 15 }.count == 4)

        // The plan says what will happen before anything is written.
        let dry = try await Blocking.run {
            try Fixture.tile(first + added, store: dir + "/store", grids: ["2154_5cm"]) { $0.dryRun = true }
        }
        let update = try #require(dry.updates.first)
        #expect(update.fullReason == nil)
        #expect(update.added == added.map { ($0 as NSString).lastPathComponent })
        #expect(update.changed.isEmpty && update.removed.isEmpty)
        #expect(update.rebuild.map(\.count) == [1, 1, 1])
        #expect(update.reuse.map(\.count) == [3, 0, 0])
        #expect(try Self.files(pyramid) == before)

        let two = try await Blocking.run {
            try Fixture.tile(first + added, store: dir + "/store", grids: ["2154_5cm"])
        }
        let g = try #require(two.grids.first)
        #expect(g.generation == 2)
        #expect(g.shardsReused == 3)
        #expect(g.shardsBuilt == 3)
        #expect(g.tilesCopied > 0 && g.tilesEncoded > 0)
        let after = try Self.files(pyramid)
        let rebuilt = try #require(
            TileMatrixSetCatalog.load(directory: Fixture.tmsDirectory).sets["2154_5cm"]?.tiles(
                covering: try Self.footprint(added[0]), z: 15)?.tiles.first)
        // Shards the new dalle does not reach keep their file: same path, same bytes, not rewritten.
        for (c, state) in before where c.z == 15 && c != rebuilt {
            #expect(after[c] == state, "\(c)")
        }
        // The rebuilt one has a new path; the old file is still there for servers on generation 1.
        let newPath = try #require(after[rebuilt]?.path)
        #expect(newPath == PyramidFolder.shardPath(rebuilt, generation: 2))
        let oldFile = try #require(before[rebuilt])
        #expect(newPath != oldFile.path)
        let kept = try ShardReader(path: pyramid + "/" + oldFile.path).readAll()
        #expect(String(format: "%08x", kept.withUnsafeBytes { Deflate.crc32($0) }) == oldFile.crc32)

        // Tiles of the rebuilt shard that the new dalle does not reach are the same bytes as before.
        let tms = try Fixture.grid("2154_5cm")
        let box = try Self.footprint(added[0])
        let tilesAfter = try Self.tiles(pyramid)
        var untouched = 0
        for (t, bytes) in tilesBefore where t.ancestor(levels: max(0, t.z - 15)) == rebuilt && t.z >= 15 {
            guard !Self.near(t, box, tms: tms) else { continue }
            #expect(tilesAfter[t] == bytes, "\(t) changed")
            untouched += 1
        }
        #expect(untouched > 0)
        #expect(g.tilesCopied >= untouched)

        // The new area reads back exactly: at the deepest level, the bytes a build from scratch makes.
        let fresh = try await Blocking.run {
            try Fixture.tile(first + added, store: dir + "/fresh", grids: ["2154_5cm"])
        }
        #expect(fresh.grids[0].tiles == g.tiles)
        let tilesFresh = try Self.tiles(dir + "/fresh/t/2154_5cm")
        let deepest = tilesFresh.keys.filter { $0.z == 22 }
        #expect(deepest.contains { tms.bounds(of: $0).intersects(box) })
        for t in deepest { #expect(tilesAfter[t] == tilesFresh[t], "\(t)") }
        #expect(Set(tilesAfter.keys) == Set(tilesFresh.keys))
        // Above, tiles mixing old and new are made from the previous level's stored tiles: close.
        let reader = try PyramidReader(directory: pyramid)
        let freshReader = try PyramidReader(directory: dir + "/fresh/t/2154_5cm")
        let top = TileCoordinate(z: 15, col: rebuilt.col, row: rebuilt.row)
        #expect(
            Fixture.psnr(try #require(try reader.decodeTile(top)), try #require(try freshReader.decodeTile(top))) > 40)
    }

    @Test func aReplacedDalleChangesOnlyItsTilesAndARemovedOneLeavesItsAreaEmpty() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Two dalles side by side in one shard, and two more elsewhere.
        let sources = try Self.fourShards(in: dir) + Self.neighbour(in: dir)
        let pyramid = dir + "/store/t/2154_5cm"
        _ = try await Blocking.run { try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"]) }
        let tms = try Fixture.grid("2154_5cm")
        let replaced = sources[4]
        let box = try Self.footprint(replaced)
        let v1 = try Self.tiles(pyramid)

        // Régime `maj`: the dalle comes again with other pixels (here, inverted).
        try Fixture.run(
            "/usr/bin/gdal_translate", ["-q", "-scale", "0", "255", "255", "0", replaced, dir + "/maj.tif"])
        try FileManager.default.removeItem(atPath: replaced)
        try FileManager.default.moveItem(atPath: dir + "/maj.tif", toPath: replaced)
        let two = try await Blocking.run {
            try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        }
        #expect(two.updates[0].changed == [(replaced as NSString).lastPathComponent])
        #expect(two.grids[0].shardsReused == 3)
        let v2 = try Self.tiles(pyramid)
        var changed = 0
        for (t, bytes) in v1 where t.z >= 15 {
            if Self.near(t, box, tms: tms) {
                if v2[t] != bytes { changed += 1 }
            } else {
                #expect(v2[t] == bytes, "\(t) changed though the replaced dalle does not reach it")
            }
        }
        let inside = v1.keys.filter { $0.z == 22 && box.contains(tms.bounds(of: $0)) }
        #expect(!inside.isEmpty)
        for t in inside { #expect(v2[t] != v1[t], "\(t) kept the old pixels") }
        #expect(changed >= inside.count)

        // The dalle withdrawn: its own tiles are gone, its neighbour's stay.
        let three = try await Blocking.run {
            try Fixture.tile(Array(sources.dropLast()), store: dir + "/store", grids: ["2154_5cm"])
        }
        #expect(three.updates[0].removed == [(replaced as NSString).lastPathComponent])
        let v3 = try Self.tiles(pyramid)
        for t in inside { #expect(v3[t] == nil, "\(t) still has imagery") }
        let neighbour = try Self.footprint(sources[0])
        let kept = v1.keys.filter {
            $0.z == 22 && neighbour.contains(tms.bounds(of: $0)) && !Self.near($0, box, tms: tms)
        }
        #expect(!kept.isEmpty)
        for t in kept { #expect(v3[t] == v1[t]) }
    }

    @Test func rollbackThenGCKeepWhatIsCurrent() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try Self.fourShards(in: dir)
        let pyramid = dir + "/store/t/2154_5cm"
        let folder = PyramidFolder(pyramid)
        _ = try await Blocking.run { try Fixture.tile(first, store: dir + "/store", grids: ["2154_5cm"]) }
        let v1 = try Self.tiles(pyramid)
        let added = try Self.neighbour(in: dir)
        _ = try await Blocking.run {
            try Fixture.tile(first + added, store: dir + "/store", grids: ["2154_5cm"])
        }
        let g2 = try #require(try folder.current())
        #expect(try Self.tiles(pyramid) != v1)

        // Back to generation 1, as a new generation 3 listing its shards: the same tiles as then.
        let g3 = try folder.rollback(to: 1)
        #expect(g3.generation == 3 && g3.restores == 1)
        #expect(try Self.tiles(pyramid) == v1)
        #expect(try folder.history().map(\.generation) == [1, 2, 3])

        // Within the grace period nothing a server may still serve goes.
        let held = try folder.collect(keep: 1, grace: 3600, dryRun: false)
        #expect(held.kept == [3] && held.protected == [1, 2] && held.deletedFiles.isEmpty)
        // After it, generation 2's own shards go; what generation 3 lists stays, byte for byte.
        let report = try folder.collect(keep: 1, grace: 0, dryRun: false)
        #expect(report.dropped == [1, 2])
        let onlyG2 = Set(g2.shards.map(\.path)).subtracting(g3.shards.map(\.path))
        #expect(Set(report.deletedFiles) == onlyG2)
        for p in onlyG2 { #expect(!FileManager.default.fileExists(atPath: pyramid + "/" + p)) }
        #expect(try Self.tiles(pyramid) == v1)
        #expect(try PyramidValidator.validate(directory: pyramid).problems.isEmpty)

        // Rolling back to a collected generation is refused and changes nothing.
        #expect {
            try folder.rollback(to: 2)
        } throws: { "\($0)".contains("generation 2") && "\($0)".contains("not kept") }
        #expect(try folder.current()?.generation == 3)
    }

    @Test func gcAndRollbackRefuseWhatWouldLoseData() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try Self.fourShards(in: dir)
        let pyramid = dir + "/store/t/2154_5cm"
        let folder = PyramidFolder(pyramid)
        _ = try await Blocking.run { try Fixture.tile(first, store: dir + "/store", grids: ["2154_5cm"]) }
        _ = try await Blocking.run {
            try Fixture.tile(first + Self.neighbour(in: dir), store: dir + "/store", grids: ["2154_5cm"])
        }
        func listing() -> [String] {
            (FileManager.default.enumerator(atPath: pyramid)?.allObjects as? [String] ?? []).sorted()
        }
        let everything = listing()

        #expect(throws: GenerationError.self) { try folder.collect(keep: 0, grace: 0, dryRun: false) }
        // A kept generation that cannot be read: what it needs is unknown, so nothing goes.
        let record = pyramid + "/generations/1.json"
        let saved = try Data(contentsOf: URL(fileURLWithPath: record))
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: record))
        #expect {
            try folder.collect(keep: 2, grace: 0, dryRun: false)
        } throws: { "\($0)".contains("kept generation 1") && "\($0)".contains("nothing deleted") }
        try saved.write(to: URL(fileURLWithPath: record))
        // A kept generation whose shard is already gone: the store is damaged; nothing more goes.
        let g1 = try folder.manifest(generation: 1)
        let gone = try #require(g1.shards.first { s in !(try folder.current()?.shards.contains(s) ?? true) })
        try FileManager.default.moveItem(atPath: pyramid + "/" + gone.path, toPath: dir + "/aside.tif")
        #expect {
            try folder.collect(keep: 2, grace: 0, dryRun: false)
        } throws: { "\($0)".contains(gone.path) && "\($0)".contains("nothing deleted") }
        #expect {
            try folder.rollback(to: 1)
        } throws: { "\($0)".contains(gone.path) }
        try FileManager.default.moveItem(atPath: dir + "/aside.tif", toPath: pyramid + "/" + gone.path)
        #expect(listing() == everything)
        #expect(try folder.current()?.generation == 2)
    }

    @Test func aStoreWrittenBeforeGenerationsIsRefusedUntouched() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try Self.fourShards(in: dir)
        let pyramid = dir + "/store/t/2154_5cm"
        _ = try await Blocking.run { try Fixture.tile(first, store: dir + "/store", grids: ["2154_5cm"]) }
        // As version 0.1 left it: no generation, no generations folder.
        var old = try PyramidManifest.load(directory: pyramid)
        old.formatVersion = 1
        old.generation = nil
        try old.save(directory: pyramid)
        try FileManager.default.removeItem(atPath: pyramid + "/generations")
        let files = (FileManager.default.enumerator(atPath: pyramid)?.allObjects as? [String] ?? []).sorted()

        let refusal = { (e: any Error) in "\(e)".contains("before generations") }
        #expect(performing: { try Fixture.tile(first, store: dir + "/store", grids: ["2154_5cm"]) }, throws: refusal)
        #expect(performing: { try PyramidFolder(pyramid).collect(keep: 1, grace: 0, dryRun: false) }, throws: refusal)
        #expect(performing: { try PyramidFolder(pyramid).rollback(to: 1) }, throws: refusal)
        #expect((FileManager.default.enumerator(atPath: pyramid)?.allObjects as? [String] ?? []).sorted() == files)
        // Servers still read it.
        #expect(try PyramidReader(directory: pyramid).manifest.shards.count == old.shards.count)
    }

    @Test func theSwitchRefusesToReplaceAGenerationItDidNotStartFrom() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 1, rows: 1)
        _ = try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        let folder = PyramidFolder(dir + "/store/t/2154_5cm")
        var m = try #require(try folder.current())
        // Another build made generation 2 from 1 first; this one also made a 2 from 1.
        m.generation = 2
        try folder.commit(m, sources: nil)
        #expect {
            try folder.commit(m, sources: nil)
        } throws: { "\($0)".contains("another build of the same tileset switched first") }
        #expect(try folder.current()?.generation == 2)
    }

    @Test func twoBuildsOfOneTilesetAtOnceOneWinsTheOtherFailsClearly() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Self.fourShards(in: dir)
        _ = try await Blocking.run { try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"]) }
        let more = sources + (try Self.neighbour(in: dir))
        // Two processes started together on generation 1.
        func start() throws -> (Process, Pipe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Fixture.executable)
            p.arguments =
                [
                    "tile", "--id", "t", "--tms", "2154_5cm", "--store", dir + "/store", "--tms-dir",
                    Fixture.tmsDirectory,
                ]
                + more
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            return (p, err)
        }
        let (a, ea) = try start()
        let (b, eb) = try start()
        let outputs = try await Blocking.run {
            let texts = [ea, eb].map { String(decoding: $0.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
            a.waitUntilExit()
            b.waitUntilExit()
            return texts
        }
        let statuses = [a.terminationStatus, b.terminationStatus]
        #expect(statuses.filter { $0 == 0 }.count == 1, "\(statuses) \(outputs)")
        let loser = outputs[statuses[0] == 0 ? 1 : 0]
        #expect(loser.contains("another dallage process is building"), "\(loser)")
        let folder = PyramidFolder(dir + "/store/t/2154_5cm")
        #expect(try folder.current()?.generation == 2)
        #expect(try PyramidValidator.validate(directory: folder.directory).problems.isEmpty)
    }
}

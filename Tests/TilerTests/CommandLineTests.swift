import Foundation
import Pyramid
import Testing

/// The command line given what users mistype: one line saying what is wrong and what to give,
/// a non-zero status, never a crash (status 132/133: a trapped conversion or a range) nor
/// Foundation's error dump.
@Suite(.blocking) struct CommandLineTests {
    /// Runs `dallage` with `arguments` in `folder`: its status and standard error.
    static func dallage(_ arguments: [String], in folder: String, environment: [String: String] = [:]) throws -> (
        status: Int32, error: String
    ) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Fixture.executable)
        p.arguments = arguments
        p.currentDirectoryURL = URL(fileURLWithPath: folder)
        p.environment = ProcessInfo.processInfo.environment.merging(
            ["DALLAGE_TMS_DIR": Fixture.tmsDirectory].merging(environment) { $1 }
        ) { $1 }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        // A command that should refuse at once but runs (a server that started) is stopped, and
        // its status (SIGTERM's) fails the check on it.
        let stop = DispatchWorkItem { if p.isRunning { p.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: stop)
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        stop.cancel()
        return (p.terminationStatus, text)
    }

    @Test(arguments: [
        (["sample-data", "--out", "x", "--resolution", "0"], "--resolution"),
        (["sample-data", "--out", "x", "--resolution", "inf"], "--resolution"),
        (["sample-data", "--out", "x", "--origin", "nan,nan"], "--origin"),
        (["sample-data", "--out", "x", "--origin", "1e300,5"], "--origin"),
        (["sample-data", "--out", "x", "--dalles", "100000x100000"], "--dalles"),
        (["sample-data", "--out", "x", "--dalles", "4294967296x4294967296"], "--dalles"),
        (["tile", "src", "--id", "t", "--store", "st", "--max-zoom=-1", "--dry-run"], "max_zoom must be 0…30"),
        (["tile", "src", "--id", "t", "--store", "st", "--min-zoom", "12", "--max-zoom", "10"], "min_zoom"),
        (["serve", "--store", "st", "--port", "80800"], "port must be 0…65535"),
        (["validate", "st"], "st is not a pyramid: it has no pyramid.json (a pyramid is STORE/TILESET/GRID"),
        (["export", "st", "--out", "x"], "st is not a pyramid"),
        (["projects", "create", "nothere.json", "--store", "st"], "nothere.json: no such file or folder"),
        (["projects", "create", "st", "--store", "st"], "st: a folder, where a file is expected"),
    ])
    func mistypedArgumentsAreOneClearLine(arguments: [String], says: String) throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/st", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
        let (status, error) = try Self.dallage(arguments, in: dir)
        #expect(status != 0 && status < 128, "\(arguments): status \(status)")
        #expect(error.contains(says), "\(arguments): \(error)")
        #expect(!error.contains("NSCocoaErrorDomain") && !error.contains("Fatal error"), "\(error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/x"), "\(arguments) wrote something")
    }

    /// `export` of a pyramid with a truncated shard: the other shards' tiles are written, the
    /// damaged one is named with the reason, and the status is 1 unless `--keep-going`.
    @Test func exportSkipsADamagedShardByName() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 2, rows: 1)
        _ = try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        let pyramid = dir + "/store/t/2154_5cm"
        let m = try PyramidManifest.load(directory: pyramid)
        let deepest = try #require(m.shards.max { $0.z < $1.z })
        let shard = pyramid + "/" + deepest.path
        let size = try #require(try FileManager.default.attributesOfItem(atPath: shard)[.size] as? Int)
        #expect(truncate(shard, off_t(size / 2)) == 0)
        let (status, error) = try Self.dallage(["export", pyramid, "--out", dir + "/out"], in: dir)
        #expect(status == 1)
        #expect(error.contains("skipping shard \(deepest.path): "), "\(error)")
        // The levels above the damaged shard's band are all there.
        let band = try #require(m.shardScheme.band(containing: deepest.z))
        let above = try #require(m.levels.last { $0.z < band.top })
        let files = try FileManager.default.subpathsOfDirectory(atPath: dir + "/out/\(above.z)").filter {
            $0.hasSuffix(".jpg")
        }
        #expect(files.count == (above.maxCol - above.minCol + 1) * (above.maxRow - above.minRow + 1))
        let kept = try Self.dallage(["export", pyramid, "--out", dir + "/out2", "--keep-going"], in: dir)
        #expect(kept.status == 0)
    }

    /// The coverage commands where there is no store: they say so and create nothing.
    @Test func coverageCommandsWithoutAStoreCreateNothing() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for arguments in [
            ["projects", "list"], ["territories", "list"], ["projects", "list", "--store", "elsewhere"],
        ] {
            let (status, error) = try Self.dallage(arguments, in: dir)
            #expect(status != 0 && status < 128, "\(arguments)")
            #expect(error.contains("no store folder at"), "\(arguments): \(error)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    /// Without a folder of grids (a binary copied elsewhere): where it looked and what to give.
    @Test func noFolderOfGridsSaysWhatToGive() throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (status, error) = try Self.dallage(
            ["tile", "src", "--id", "t", "--store", "st", "--tms-dir", dir + "/none"], in: dir)
        #expect(status != 0 && status < 128)
        #expect(error.contains("no folder of grids at \(dir)/none: give --tms-dir or DALLAGE_TMS_DIR"), "\(error)")
    }
}

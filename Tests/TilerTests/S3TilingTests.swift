import Foundation
import GeoGrid
import NIOCore
import Pyramid
import Raster
import S3
import TestSupport
import Testing
import Tiler

/// The tiler writing to object storage (a real SeaweedFS): the same shards, byte for byte, as into
/// a folder; `--resume` from the records in the bucket after a kill; bad settings refused at once.
@Suite(.seaweedFS, .serialized, .blocking)
struct S3TilingTests {
    var server: SeaweedFS {
        get throws { try #require(SeaweedFS.current, "the suite's SeaweedFS server") }
    }

    /// A store prefix no other test uses.
    static func store() -> (url: String, prefix: String) {
        let prefix = "tiles-\(UUID().uuidString.prefix(8).lowercased())"
        return ("s3://\(SeaweedFS.bucketName)/\(prefix)", prefix)
    }

    func withBucket<R>(_ body: (S3Bucket) async throws -> R) async throws -> R {
        try await S3Client.withClient(configuration: try server.configuration) { client in
            try await body(client.bucket(SeaweedFS.bucketName))
        }
    }

    /// Tiles into the bucket, in this process (on a Dispatch thread: the tiler blocks its threads).
    func tile(
        _ sources: [String], store: String, staging: String,
        configure: @escaping @Sendable (inout TileOptions) -> Void =
            { _ in }
    ) async throws -> TilingSummary {
        let environment = try server.environment
        return try await Blocking.run {
            try Fixture.tile(sources, store: store, grids: ["2154_5cm"]) { options in
                options.environment = environment
                options.staging = staging
                configure(&options)
            }
        }
    }

    /// CRC-32 (hex) of bytes.
    static func crc(_ bytes: some Collection<UInt8>) -> String {
        String(format: "%08x", Array(bytes).withUnsafeBytes { Deflate.crc32($0) })
    }

    /// Every object under a prefix with the CRC-32 of its bytes, by key relative to the prefix.
    func objects(under prefix: String) async throws -> [String: String] {
        try await withBucket { bucket in
            var out: [String: String] = [:]
            for o in try await bucket.list(prefix: prefix + "/") {
                let object = try await bucket.get(o.key, maxBytes: 512 << 20)
                out[String(o.key.dropFirst(prefix.count + 1))] = Self.crc(object.bytes.readableBytesView)
            }
            return out
        }
    }

    /// The manifest as JSON with `created` blanked: two builds of one plan are equal apart from it.
    static func comparable(_ m: PyramidManifest) throws -> String {
        var m = m
        m.created = ""
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(m), as: UTF8.self)
    }

    func manifest(_ prefix: String) async throws -> PyramidManifest {
        try await withBucket { bucket in
            try #require(try await BucketPyramid(bucket: bucket, prefix: prefix).current()?.manifest)
        }
    }

    @Test func aBuildIntoABucketMakesTheShardsAndManifestOfABuildIntoAFolder() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        let (url, prefix) = Self.store()
        let pyramid = "\(prefix)/t/2154_5cm"
        _ = try await Blocking.run {
            try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"])
        }
        let summary = try await tile(sources, store: url, staging: dir + "/staging")
        #expect(summary.grids.first?.generation == 1)
        #expect(summary.grids.first?.failed == [])

        let folder = try #require(try PyramidFolder(dir + "/store/t/2154_5cm").current())
        let remote = try await manifest(pyramid)
        #expect(try Self.comparable(remote) == Self.comparable(folder))
        #expect(remote.shards.count == 5)
        // Each object's bytes are the shard the manifest describes, and the folder's file.
        let landed = try await objects(under: pyramid)
        for s in remote.shards {
            #expect(landed[s.path] == s.crc32, "\(s.path)")
            let file = try ShardReader(path: dir + "/store/t/2154_5cm/" + s.path).readAll()
            #expect(Self.crc(file) == s.crc32)
        }
        // The folder's layout under the prefix: generations, footprint; the records gone.
        #expect(landed["generations/1.json"] != nil && landed["generations/1.sources.json"] != nil)
        let footprint = try Data(contentsOf: URL(fileURLWithPath: dir + "/store/t/2154_5cm/footprint.json"))
        #expect(landed["footprint.json"] == Self.crc(footprint))
        #expect(!landed.keys.contains { $0.hasPrefix("done/") })
        #expect(Set(landed.keys.filter { $0.hasPrefix("shards/") }) == Set(remote.shards.map(\.path)))
        // The staging folder keeps nothing of a finished build.
        let staged = FileManager.default.enumerator(atPath: dir + "/staging")?.allObjects as? [String] ?? []
        #expect(!staged.contains { $0.hasSuffix(".tif") }, "\(staged)")

        // A tranche: the shard it reaches and those above are rebuilt (their previous versions
        // fetched from the bucket), the others kept; again the folder's bytes.
        let more = sources + (try GenerationTests.neighbour(in: dir))
        _ = try await Blocking.run { try Fixture.tile(more, store: dir + "/store", grids: ["2154_5cm"]) }
        let two = try #require(try await tile(more, store: url, staging: dir + "/staging").grids.first)
        #expect(two.generation == 2)
        #expect(two.shardsReused == 3 && two.shardsBuilt == 3)
        #expect(two.tilesCopied > 0)
        let folder2 = try #require(try PyramidFolder(dir + "/store/t/2154_5cm").current())
        let remote2 = try await manifest(pyramid)
        #expect(try Self.comparable(remote2) == Self.comparable(folder2))
        let landed2 = try await objects(under: pyramid)
        for s in remote2.shards { #expect(landed2[s.path] == s.crc32, "\(s.path)") }
        // Generation 1's shards are still there for servers on it.
        for s in remote.shards { #expect(landed2[s.path] == s.crc32, "\(s.path)") }
        let footprint2 = try Data(contentsOf: URL(fileURLWithPath: dir + "/store/t/2154_5cm/footprint.json"))
        #expect(landed2["footprint.json"] == Self.crc(footprint2))

        // A third run with nothing changed makes no generation.
        let three = try #require(try await tile(more, store: url, staging: dir + "/staging").grids.first)
        #expect(three.generation == 2 && three.shardsBuilt == 0)
    }

    @Test func theSwitchRefusesAManifestThatMovedUnderIt() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 1, rows: 1)
        _ = try await Blocking.run { try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"]) }
        let m = try #require(try PyramidFolder(dir + "/store/t/2154_5cm").current())
        try await withBucket { bucket in
            let pyramid = BucketPyramid(bucket: bucket, prefix: "switch-\(UUID().uuidString.prefix(8))/t/g")
            try await pyramid.commit(m, sources: nil)
            // Generation 1 again: refused (the manifest exists: If-None-Match: *, or the check).
            await #expect(throws: GenerationError.self) { try await pyramid.commit(m, sources: nil) }
            var two = m
            two.generation = 2
            try await pyramid.commit(two, sources: nil)
            #expect(try await pyramid.current()?.manifest.generation == 2)
            // Another build also made 2 from 1: refused, 2 stays.
            await #expect(throws: GenerationError.self) { try await pyramid.commit(two, sources: nil) }
            // Two finishers of generation 3 that both read generation 2: the one that lost the
            // switch wrote its record after the winner's, and puts the winner's back.
            let read = try await pyramid.current()
            var winner = two
            winner.generation = 3
            winner.created = "2026-12-07T10:00:00Z"
            var loser = winner
            loser.created = "2026-12-07T10:00:01Z"
            try await pyramid.commit(winner, sources: nil, over: read)
            await #expect(throws: GenerationError.self) { try await pyramid.commit(loser, sources: nil, over: read) }
            #expect(try await pyramid.current()?.manifest.created == winner.created)
            #expect(try await pyramid.manifest(generation: 3).created == winner.created)

            // The conditional PUT itself: a manifest replaced after it was read is not overwritten.
            let before = try #require(try await pyramid.current())
            try await bucket.put(pyramid.key("pyramid.json"), ByteBuffer(bytes: Array(before.manifest.created.utf8)))
            await #expect(throws: S3Error.self) {
                try await bucket.put(pyramid.key("pyramid.json"), ByteBuffer(string: "{}"), ifMatch: before.etag)
            }
        }
    }

    @Test func aKilledBuildResumedFromTheBucketMakesTheShardsOfACleanOne() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Eight shards of 2048×2048 px dalles, built one at a time: a run long enough to kill.
        let sources = try (0..<8).flatMap { i in
            let origin = (704_000 + Double(i % 4) * 2000, 7_060_000 - Double(i / 4) * 2000)
            return try Fixture.sample(
                in: dir + "/src\(i)", columns: 1, rows: 1, dalleSize: 102.4, origin: origin)
        }
        let (url, prefix) = Self.store()
        let pyramid = "\(prefix)/t/2154_5cm"
        let clean = Self.store()
        let cleanRun = try await tile(sources, store: clean.url, staging: dir + "/staging-clean") { $0.threads = 1 }
        let reference = try await manifest("\(clean.prefix)/t/2154_5cm")
        let crcs = Dictionary(uniqueKeysWithValues: reference.shards.map { ($0.path, $0.crc32) })

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixture.executable)
        process.arguments =
            [
                "tile", "--id", "t", "--tms", "2154_5cm", "--store", url, "--threads", "1", "--staging",
                dir + "/staging", "--tms-dir", Fixture.tmsDirectory,
            ] + sources
        process.environment = ProcessInfo.processInfo.environment.merging(try server.environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try await eventually("a shard record in the bucket") {
            try await withBucket { try await !$0.list(prefix: pyramid + "/done/").isEmpty }
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)

        // Killed before the switch: no manifest, and every object under a shard's name is whole.
        let landed = try await objects(under: pyramid)
        #expect(landed["pyramid.json"] == nil, "the run finished before it was killed: make it longer")
        let shardsLanded = landed.filter { $0.key.hasPrefix("shards/") }
        #expect(!shardsLanded.isEmpty)
        for (path, crc) in shardsLanded { #expect(crcs[path] == crc, "\(path) is not a whole shard") }
        let records = landed.keys.filter { $0.hasPrefix("done/") }.count
        #expect(records >= 1 && records < reference.shards.count)

        let resumed = try #require(
            try await tile(sources, store: url, staging: dir + "/staging") { $0.resume = true }.grids.first)
        #expect(resumed.shardsResumed >= records)
        // Every planned shard (one of which turns out empty, kept by neither) built once in all.
        #expect(resumed.shardsResumed + resumed.shardsBuilt == cleanRun.grids.first?.shardsBuilt)
        let m = try await manifest(pyramid)
        #expect(try Self.comparable(m) == Self.comparable(reference))
        let after = try await objects(under: pyramid)
        for s in m.shards { #expect(after[s.path] == s.crc32, "\(s.path)") }
    }

    @Test func dallesInABucketTileAsFromLocalFiles() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try GenerationTests.fourShards(in: dir)
        let folder = "dalles-\(UUID().uuidString.prefix(8).lowercased())"
        let urls = try await withBucket { bucket in
            var urls: [String] = []
            for (i, path) in sources.enumerated() {
                let key = "\(folder)/\(i)/\((path as NSString).lastPathComponent)"
                try await bucket.upload(file: path, to: key)
                urls.append("s3://\(SeaweedFS.bucketName)/\(key)")
            }
            return urls
        }
        let environment = try server.environment
        _ = try await Blocking.run { try Fixture.tile(sources, store: dir + "/local", grids: ["2154_5cm"]) }
        // Named one by one, and as a folder.
        for (name, given) in [("keys", urls), ("folder", ["s3://\(SeaweedFS.bucketName)/\(folder)/"])] {
            let summary = try await Blocking.run {
                try Fixture.tile(given, store: dir + "/" + name, grids: ["2154_5cm"]) { $0.environment = environment }
            }
            #expect(summary.sources == 4 && summary.skipped.isEmpty, "\(summary.skipped)")
            let a = try #require(try PyramidFolder(dir + "/local/t/2154_5cm").current())
            let b = try #require(try PyramidFolder(dir + "/\(name)/t/2154_5cm").current())
            #expect(b.shards.count == a.shards.count)
            #expect(b.shards == a.shards, "\(name)")
        }
    }

    /// `dallage` as a user runs it, with an environment of its own: (status, standard error).
    func dallage(_ arguments: [String], environment: [String: String]) async throws -> (Int32, String) {
        let (status, _, err) = try await dallageOutput(arguments, environment: environment)
        return (status, err)
    }

    /// `dallage` as a user runs it: (status, standard output, standard error).
    func dallageOutput(_ arguments: [String], environment: [String: String]) async throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixture.executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
        env.merge(environment) { $1 }
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardError = err
        process.standardOutput = out
        try process.run()
        return try await Blocking.run {
            // Standard error on a thread of its own, so neither pipe can fill and stall the program.
            let errors = DispatchQueue(label: "stderr")
            nonisolated(unsafe) var errText = ""
            let group = DispatchGroup()
            errors.async(group: group) {
                errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            }
            let outText = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            group.wait()
            process.waitUntilExit()
            return (process.terminationStatus, outText, errText)
        }
    }

    /// Every file under a folder with its bytes' CRC-32, by relative path.
    static func tree(_ dir: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for case let f as String in FileManager.default.enumerator(atPath: dir)?.allObjects ?? [] {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir + "/" + f, isDirectory: &isDir), !isDir.boolValue else {
                continue
            }
            out[f] = crc(try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f)))
        }
        return out
    }

    @Test func inspectValidateAndExportReadAPyramidInABucket() async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 2, rows: 2)
        let (url, prefix) = Self.store()
        let pyramid = "\(prefix)/t/2154_5cm"
        _ = try await Blocking.run { try Fixture.tile(sources, store: dir + "/store", grids: ["2154_5cm"]) }
        _ = try await tile(sources, store: url, staging: dir + "/staging")
        let environment = try server.environment
        let target = "\(url)/t/2154_5cm"

        let (s1, json, _) = try await dallageOutput(["inspect", target, "--json"], environment: environment)
        #expect(s1 == 0)
        let stored = try await withBucket { try await $0.get(pyramid + "/pyramid.json") }
        #expect(json == String(decoding: stored.bytes.readableBytesView, as: UTF8.self) + "\n")
        let (s2, summary, _) = try await dallageOutput(["inspect", target], environment: environment)
        #expect(s2 == 0 && summary.contains("tileset     t") && summary.contains("* 1 "), "\(summary)")

        let (s3, report, _) = try await dallageOutput(
            ["validate", target, "--scratch", dir + "/scratch"], environment: environment)
        let shards = try await manifest(pyramid).shards
        #expect(s3 == 0 && report.contains("\(shards.count) shard(s) checked, 0 problem(s)"), "\(report)")

        let (s4, _, _) = try await dallageOutput(
            ["export", target, "--out", dir + "/from-bucket"], environment: environment)
        #expect(s4 == 0)
        _ = try await dallageOutput(
            ["export", dir + "/store/t/2154_5cm", "--out", dir + "/from-folder"], environment: [:])
        let exported = try Self.tree(dir + "/from-bucket")
        #expect(!exported.isEmpty)
        #expect(exported == (try Self.tree(dir + "/from-folder")))

        // A damaged shard and a stray object: both named, exit 1.
        let damaged = try #require(shards.first)
        try await withBucket { bucket in
            try await bucket.put(pyramid + "/" + damaged.path, ByteBuffer(string: "not a shard"))
            try await bucket.put(pyramid + "/shards/9/9/9.tif", ByteBuffer(string: "stray"))
        }
        let (s5, problems, _) = try await dallageOutput(
            ["validate", target, "--scratch", dir + "/scratch"], environment: environment)
        #expect(s5 == 1)
        #expect(problems.contains("PROBLEM \(damaged.path)"), "\(problems)")
        #expect(problems.contains("PROBLEM shards/9/9/9.tif: in the bucket but listed by no kept generation"))
        let scratch = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/scratch")) ?? []
        #expect(scratch.isEmpty, "\(scratch)")
    }

    @Test(arguments: ["credentials", "no credentials", "bucket", "endpoint"])
    func badSettingsAreOneClearLineBeforeAnyWork(_ what: String) async throws {
        let dir = Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sources = try Fixture.sample(in: dir + "/src", columns: 1, rows: 1)
        var environment = try server.environment
        var bucket = SeaweedFS.bucketName
        let expected: String
        switch what {
        case "credentials":
            environment["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
            expected = "check AWS_ACCESS_KEY_ID"
        case "no credentials":
            environment["AWS_ACCESS_KEY_ID"] = nil
            expected = "no credentials: set AWS_ACCESS_KEY_ID"
        case "bucket":
            bucket = "no-such-bucket-\(UUID().uuidString.prefix(8).lowercased())"
            expected = "create the bucket first"
        default:
            let port = try freePorts(1)[0]
            environment["AWS_ENDPOINT_URL"] = "http://127.0.0.1:\(port)"
            expected = "check AWS_ENDPOINT_URL"
        }
        let (status, stderr) = try await dallage(
            [
                "tile", "--id", "t", "--tms", "2154_5cm", "--store", "s3://\(bucket)/bad", "--staging",
                dir + "/staging", "--tms-dir", Fixture.tmsDirectory,
            ] + sources, environment: environment)
        #expect(status != 0)
        let lines = stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(stderr)")
        #expect(stderr.contains("s3://\(bucket)/bad") && stderr.contains(expected), "\(stderr)")
        #expect(!stderr.contains("not-the-secret") && !stderr.contains(SeaweedFS.secretKey))
        // Nothing was written: no staging folder, no object.
        #expect(!FileManager.default.fileExists(atPath: dir + "/staging"))
        let written = try await withBucket { try await $0.list(prefix: "bad/") }
        #expect(written.isEmpty)
    }
}

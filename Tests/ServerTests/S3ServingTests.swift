import Foundation
import GeoGrid
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Pyramid
import Raster
import S3
import Server
import Serving
import TestSupport
import Testing

/// The server on an `s3://` store (issue 15, part 4): the fixture's store tiled to a folder,
/// uploaded to a real S3 (SeaweedFS), served from both; what a client sees must be the same.
@Suite(.seaweedFS, .serialized)
struct S3ServingTests {
    let folder = ServerFixture.shared + "/store"

    /// The fixture's store uploaded under a prefix of its own: each test may change its copy.
    static func uploaded() async throws -> String {
        let server = try #require(SeaweedFS.current)
        let prefix = "stores/\(UUID().uuidString)"
        try await server.upload(folder: ServerFixture.shared + "/store", prefix: prefix)
        return prefix
    }

    /// Runs `body` with a store on the bucket under `prefix` (its own client and caches).
    static func withStore<R>(_ prefix: String, _ body: (S3Store) async throws -> R) async throws -> R {
        let server = try #require(SeaweedFS.current)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try await S3Client.withClient(configuration: server.configuration, logger: logger) { client in
            try await body(S3Store(bucket: client.bucket(SeaweedFS.bucketName), prefix: prefix, logger: logger))
        }
    }

    /// Tiles to compare on one grid: at each level the corners of the data, its middle, and just
    /// outside it (absent), by XYZ and WMTS REST; and a transcoded PNG of the deepest level.
    static func uris(_ m: PyramidManifest, grid: String) -> [String] {
        var out: [String] = []
        for l in m.levels {
            let tiles = [
                (l.minCol, l.minRow), (l.maxCol, l.maxRow), ((l.minCol + l.maxCol) / 2, (l.minRow + l.maxRow) / 2),
                (l.maxCol + 1, l.maxRow), (l.minCol, l.minRow - 1),
            ]
            for (col, row) in tiles {
                out.append("/tiles/pcrs/\(grid)/\(l.z)/\(col)/\(row).jpg")
                out.append("/wmts/1.0.0/pcrs/normal/\(grid)/\(l.z)/\(row)/\(col).jpg")
            }
        }
        if let deepest = m.limits(z: m.maxZoom) {
            out.append("/tiles/pcrs/\(grid)/\(m.maxZoom)/\(deepest.minCol)/\(deepest.minRow).png")
        }
        return out
    }

    struct Answer: Equatable, CustomStringConvertible {
        var status: HTTPResponse.Status
        var type: String?
        var etag: String?
        var bytes: [UInt8]
        var description: String { "\(status.code) \(type ?? "-") \(etag ?? "-") \(bytes.count) bytes" }
    }

    static func get(_ client: some TestClientProtocol, _ uri: String) async throws -> Answer {
        try await client.execute(uri: uri, method: .get) { r in
            Answer(
                status: r.status, type: r.headers[.contentType], etag: r.headers[.eTag],
                bytes: Array(r.body.readableBytesView))
        }
    }

    @Test func sameTilesHeadersAndETagsAsTheFolder() async throws {
        let prefix = try await Self.uploaded()
        let square = try PyramidReader(directory: folder + "/pcrs/2154_5cm").manifest
        let pm = try PyramidReader(directory: folder + "/pcrs/PM").manifest
        let b = square.bounds
        let uris =
            Self.uris(square, grid: "2154_5cm") + Self.uris(pm, grid: "PM") + [
                // A WMS map decodes tiles through the store's blocking reads.
                "/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=pcrs&STYLES=&CRS=EPSG:2154"
                    + "&BBOX=\(b.minX),\(b.minY),\(b.maxX),\(b.maxY)&WIDTH=300&HEIGHT=300&FORMAT=image/png",
                "/tiles/pcrs/2154_5cm/tilejson.json",
            ]
        try await Self.withStore(prefix) { store in
            let fromBucket = try ServerFixture.app(
                store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store)
            try await ServerFixture.app(store: folder).test(.live) { local in
                try await fromBucket.test(.live) { remote in
                    // Cold (from the bucket), then warm (the fast lane's hot tiles): alike each time.
                    for round in ["cold", "warm"] {
                        var present = 0
                        for uri in uris {
                            let expected = try await Self.get(local, uri)
                            let got = try await Self.get(remote, uri)
                            if uri.hasPrefix("/tiles/pcrs/2154_5cm/tilejson") {
                                #expect(got.status == .ok, "\(round) \(uri)")
                                continue
                            }
                            #expect(got == expected, "\(round) \(uri): \(got) where the folder gives \(expected)")
                            if expected.status == .ok { present += 1 }
                        }
                        #expect(present > 40, "\(round): only \(present) tiles found")
                    }
                }
            }
        }
    }

    /// A pyramid whose manifest is replaced in the bucket (a new generation) is reloaded by the
    /// next rescan; one that appears is served, without a restart.
    @Test func rescansSeeARebuiltAndANewPyramid() async throws {
        let prefix = try await Self.uploaded()
        let server = try #require(SeaweedFS.current)
        let path = folder + "/pcrs/2154_5cm/pyramid.json"
        var manifest = try JSONDecoder().decode(
            PyramidManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        manifest.title = "PCRS rebuilt"
        let rebuilt = try JSONEncoder().encode(manifest)
        manifest.tileset = "other"
        let other = manifest
        try await Self.withStore(prefix) { store in
            try await ServerFixture.app(store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store).test(.router) {
                client in
                #expect(try await Self.get(client, "/tiles/other/2154_5cm/tilejson.json").status != .ok)
                try await S3Client.withClient(configuration: server.configuration) { s3 in
                    let bucket = s3.bucket(SeaweedFS.bucketName)
                    try await bucket.put("\(prefix)/pcrs/2154_5cm/pyramid.json", ByteBuffer(bytes: rebuilt))
                    // The same pyramid under another tileset id: its shards are where the manifest says.
                    for shard in other.shards {
                        try await bucket.upload(
                            file: folder + "/pcrs/2154_5cm/\(shard.path)", to: "\(prefix)/other/2154_5cm/\(shard.path)")
                    }
                    try await bucket.put(
                        "\(prefix)/other/2154_5cm/pyramid.json", ByteBuffer(bytes: try JSONEncoder().encode(other)))
                }
                try await eventually("the rebuilt manifest to be served") {
                    String(
                        decoding: try await Self.get(client, "/wmts/1.0.0/WMTSCapabilities.xml").bytes, as: UTF8.self
                    )
                    .contains("PCRS rebuilt")
                }
                try await eventually("the new pyramid to be served") {
                    try await Self.get(client, "/tiles/other/2154_5cm/tilejson.json").status == .ok
                }
                let t = ServerFixture.innerTile
                let a = try await Self.get(client, "/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row).jpg")
                let b = try await Self.get(client, "/tiles/other/2154_5cm/22/\(t.col)/\(t.row).jpg")
                #expect(a.status == .ok && a == b)
            }
        }
    }

    @Test func oneGetPerColdTileOnceTheShardIndexIsKnown() async throws {
        let prefix = try await Self.uploaded()
        let manifest = try PyramidReader(directory: folder + "/pcrs/2154_5cm").manifest
        try await Self.withStore(prefix) { store in
            try await ServerFixture.app(store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store).test(.live) {
                client in
                var shardsSeen = Set<TileCoordinate>()
                var present = 0
                // Every tile of the three deepest levels, each asked once: cold.
                for z in stride(from: manifest.maxZoom, through: manifest.maxZoom - 2, by: -1) {
                    let l = try #require(manifest.limits(z: z))
                    for row in l.minRow...l.maxRow {
                        for col in l.minCol...l.maxCol {
                            let shard = try #require(
                                manifest.shardScheme.locate(TileCoordinate(z: z, col: col, row: row)))
                            let before = store.counters.indexGets + store.counters.tileGets
                            let status = try await client.execute(
                                uri: "/tiles/pcrs/2154_5cm/\(z)/\(col)/\(row).jpg", method: .get
                            ) { $0.status }
                            let gets = store.counters.indexGets + store.counters.tileGets - before
                            let first = shardsSeen.insert(shard.shard).inserted
                            if status == .ok { present += 1 }
                            let expected = (first ? 1 : 0) + (status == .ok ? 1 : 0)
                            #expect(
                                gets == expected,
                                "z\(z) \(col),\(row) (\(status.code), first of its shard: \(first)): \(gets) GETs")
                        }
                    }
                }
                #expect(present > 10)
                #expect(store.counters.indexGets == shardsSeen.count)
                // /healthz says the same (bench/s3 reads it there).
                let health = try await client.execute(uri: "/healthz", method: .get) { r in
                    (try JSONSerialization.jsonObject(with: Data(r.body.readableBytesView)) as? [String: Any])?["s3"]
                        as? [String: Int]
                }
                #expect(health?["index_gets"] == shardsSeen.count && health?["tile_gets"] == present)
                // Asked again: answered from memory, no GET.
                let before = store.counters.gets
                let l = try #require(manifest.limits(z: manifest.maxZoom))
                for row in l.minRow...l.maxRow {
                    for col in l.minCol...l.maxCol {
                        _ = try await client.execute(
                            uri: "/tiles/pcrs/2154_5cm/\(manifest.maxZoom)/\(col)/\(row).jpg", method: .get
                        ) { $0.status }
                    }
                }
                #expect(store.counters.gets == before)
            }
        }
    }

    @Test func theDiskCacheAnswersTilesFallenOutOfMemory() async throws {
        let prefix = try await Self.uploaded()
        let server = try #require(SeaweedFS.current)
        let t = ServerFixture.innerTile
        let expected = try #require(try PyramidReader(directory: folder + "/pcrs/2154_5cm").tileData(t))
        let cacheDir = NSTemporaryDirectory() + "dallage-tile-cache-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: cacheDir) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        try await S3Client.withClient(configuration: server.configuration, logger: logger) { client in
            var settings = S3StoreSettings()
            let disk = try TileDiskCache(directory: cacheDir, capacity: 1 << 20)
            settings.diskCache = disk
            let store = S3Store(
                bucket: client.bucket(SeaweedFS.bucketName), prefix: prefix, settings: settings, logger: logger)
            // No hot tiles in memory: every request goes to the store.
            try await ServerFixture.app(
                store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store, configure: { $0.hotTileCacheBytes = 0 }
            ).test(.live) { client in
                let uri = "/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row).jpg"
                let cold = try await Self.get(client, uri)
                #expect(cold.status == .ok && cold.bytes == expected)
                try await eventually("the tile to be written to the disk cache") { disk.count == 1 }
                #expect(disk.bytes == expected.count)
                let gets = store.counters.gets
                let again = try await Self.get(client, uri)
                #expect(again == cold)
                #expect(store.counters.gets == gets)
            }
        }
    }

    @Test func concurrentRequestsForOneTileShareOneGet() async throws {
        let prefix = try await Self.uploaded()
        let t = ServerFixture.innerTile
        try await Self.withStore(prefix) { store in
            try await ServerFixture.app(store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store).test(.router) {
                client in
                let uri = "/tiles/pcrs/2154_5cm/22/\(t.col)/\(t.row).jpg"
                let answers = try await withThrowingTaskGroup(of: Answer.self) { group in
                    for _ in 0..<16 { group.addTask { try await Self.get(client, uri) } }
                    var all: [Answer] = []
                    for try await a in group { all.append(a) }
                    return all
                }
                #expect(answers.allSatisfy { $0.status == .ok && $0 == answers[0] })
                // 16 at once: the shard's index is fetched once, shared by those that asked while
                // it came and kept for the others. The tile's GET is shared the same way by those
                // asking while it is under way (how many that is depends on timing: not asserted).
                #expect(store.counters.indexGets == 1)
                #expect((1...16).contains(store.counters.tileGets))
            }
        }
    }

    @Test func aDeletedShardBreaksOnlyItsOwnTiles() async throws {
        let prefix = try await Self.uploaded()
        let server = try #require(SeaweedFS.current)
        let square = try PyramidReader(directory: folder + "/pcrs/2154_5cm").manifest
        let pm = try PyramidReader(directory: folder + "/pcrs/PM").manifest
        @Sendable func shard(_ m: PyramidManifest, _ tile: TileCoordinate) throws -> String {
            let loc = try #require(m.shardScheme.locate(tile))
            let s = try #require(m.shards.first { $0.coordinate == loc.shard })
            return "\(prefix)/pcrs/\(m.tileMatrixSet.id)/\(s.path)"
        }
        let deep = try #require(square.limits(z: square.maxZoom))
        let a = TileCoordinate(z: square.maxZoom, col: deep.minCol + 1, row: deep.minRow + 1)
        let b = TileCoordinate(z: square.maxZoom, col: deep.minCol + 2, row: deep.minRow + 1)
        let upper = try #require(square.limits(z: square.maxZoom - 8))
        let pmDeep = try #require(pm.limits(z: pm.maxZoom))
        let pmUpper = try #require(pm.limits(z: pm.maxZoom - 8))
        @Sendable func uri(_ grid: String, _ z: Int, _ col: Int, _ row: Int) -> String {
            "/tiles/pcrs/\(grid)/\(z)/\(col)/\(row).jpg"
        }
        let logged = CollectedLogs()
        var logger = Logger(label: "test") { _ in logged }
        logger.logLevel = .warning
        try await Self.withStore(prefix) { store in
            try await ServerFixture.app(
                store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store, logger: logger
            ).test(.live) {
                client in
                // A shard whose index is known, then deleted: its other tiles fail.
                #expect(try await Self.get(client, uri("2154_5cm", a.z, a.col, a.row)).status == .ok)
                // A shard deleted before anything was read of it.
                let deleted = [
                    try shard(square, a),
                    try shard(pm, TileCoordinate(z: pm.maxZoom, col: pmDeep.minCol, row: pmDeep.minRow)),
                ]
                try await S3Client.withClient(configuration: server.configuration) { client in
                    for key in deleted { try await client.bucket(SeaweedFS.bucketName).delete(key) }
                }
                for (grid, z, col, row) in [
                    ("2154_5cm", b.z, b.col, b.row), ("PM", pm.maxZoom, pmDeep.minCol, pmDeep.minRow),
                ] {
                    let first = try await Self.get(client, uri(grid, z, col, row))
                    #expect(first.status == .internalServerError, "\(grid) \(z)/\(col)/\(row): \(first)")
                    // Asked again: the same answer, without asking the bucket again.
                    let gets = store.counters.gets
                    #expect(try await Self.get(client, uri(grid, z, col, row)).status == .internalServerError)
                    #expect(store.counters.gets == gets)
                }
                // The other shards of both pyramids still answer.
                #expect(try await Self.get(client, uri("2154_5cm", upper.z, upper.minCol, upper.minRow)).status == .ok)
                #expect(try await Self.get(client, uri("PM", pmUpper.z, pmUpper.minCol, pmUpper.minRow)).status == .ok)
                #expect(try await Self.get(client, "/tiles/pcrs/2154_5cm/tilejson.json").status == .ok)
                // Each broken shard is logged once, naming it, however often its tiles are asked.
                for key in deleted {
                    let lines = logged.messages.filter { $0.contains("unreadable shard") && $0.contains(key) }
                    #expect(lines.count == 1, "\(key): \(logged.messages)")
                }
            }
        }
    }

    /// Extracts, the source dalles' list and coverage's footprints read the bucket as they read
    /// the folder.
    @Test func extractsDallesAndFootprintsReadTheBucket() async throws {
        let prefix = try await Self.uploaded()
        let triangle = RenderAndExtractTests.triangle.replacingOccurrences(of: "\n", with: "")
        let geometry = triangle.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        @Sendable func answers(_ client: some TestClientProtocol) async throws -> (checksums: String, dalles: String) {
            let body = #"{"tileset":"pcrs","geometry":\#(triangle),"format":"cog"}"#
            let extract = try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body))
            {
                r in
                #expect(r.status == .ok, "\(String(buffer: r.body))")
                return Data(r.body.readableBytesView)
            }
            let path = NSTemporaryDirectory() + "extract-s3-\(UUID().uuidString).tif"
            defer { try? FileManager.default.removeItem(atPath: path) }
            try extract.write(to: URL(fileURLWithPath: path))
            let (_, info) = try await ServerFixture.run("/usr/bin/gdalinfo", ["-checksum", path])
            let checksums = info.split(separator: "\n").filter { $0.contains("Checksum=") || $0.hasPrefix("Size is") }
            let dalles = try await client.execute(
                uri: "/api/extracts/dalles?tileset=pcrs&geometry=\(geometry)", method: .get
            ) {
                r in
                #expect(r.status == .ok, "\(String(buffer: r.body))")
                return String(buffer: r.body)
            }
            return (checksums.joined(separator: "\n"), dalles)
        }
        try await Self.withStore(prefix) { store in
            let local = try await ServerFixture.app(store: folder).test(.router) { try await answers($0) }
            let remote = try await ServerFixture.app(
                store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store
            ).test(.router) { try await answers($0) }
            #expect(remote.checksums == local.checksums && local.checksums.contains("Checksum="), "\(remote.checksums)")
            #expect(remote.dalles == local.dalles && local.dalles.contains("-LA93-0M05-RVB.tif"), "\(remote.dalles)")
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let catalog = PyramidCatalog(store: store, logger: logger)
            let fromBucket = try #require(try StoreFootprints(catalog: catalog).footprint(of: "pcrs"))
            let fromFolder = try #require(try StoreFootprints(store: folder).footprint(of: "pcrs"))
            #expect(fromBucket.area > 0 && abs(fromBucket.area - fromFolder.area) < 1e-6)
            #expect(StoreFootprints(catalog: catalog).tilesets() == ["pcrs"])
        }
    }

    @Test func gdalReadsTheSamePixelsThroughWMTS() async throws {
        let prefix = try await Self.uploaded()
        let t = ServerFixture.innerTile
        let pyramid = try PyramidReader(directory: folder + "/pcrs/2154_5cm")
        let expected = try #require(try pyramid.decodeTile(t))
        try await Self.withStore(prefix) { store in
            try await ServerFixture.app(store: "s3://\(SeaweedFS.bucketName)/\(prefix)", reading: store).test(.live) {
                client in
                let port = try #require(client.port)
                let same = try await ServerFixture.pixelsGDALReadsLikeThePyramid(
                    base: "http://127.0.0.1:\(port)", pyramid: pyramid, expected: expected)
                #expect(same == 256 * 256)
            }
        }
    }

    /// `dallage serve` on a store it cannot read: a line saying why, a failure status, quickly.
    @Test func serveRefusesABucketItCannotRead() async throws {
        let server = try #require(SeaweedFS.current)
        let binary = ServerFixture.root + "/.build/debug/dallage"
        try #require(FileManager.default.isExecutableFile(atPath: binary))
        let closed = try freePorts(1)[0]
        let base = [
            "AWS_ACCESS_KEY_ID": SeaweedFS.accessKey, "AWS_SECRET_ACCESS_KEY": SeaweedFS.secretKey,
            "AWS_ENDPOINT_URL": "http://127.0.0.1:\(server.port)", "AWS_REGION": "us-east-1",
            "DALLAGE_DB": NSTemporaryDirectory() + "dallage-s3-\(UUID().uuidString).sqlite",
            "DALLAGE_EXTRACTS_DIR": NSTemporaryDirectory() + "dallage-s3-extracts-\(UUID().uuidString)",
        ]
        let cases: [(String, [String: String], String)] = [
            ("s3://\(SeaweedFS.bucketName)/x", ["AWS_SECRET_ACCESS_KEY": "not-the-secret"], "SignatureDoesNotMatch"),
            ("s3://\(SeaweedFS.bucketName)/x", ["AWS_ACCESS_KEY_ID": "nobody"], "InvalidAccessKeyId"),
            ("s3://no-such-bucket-here/x", [:], "NoSuchBucket"),
            (
                "s3://\(SeaweedFS.bucketName)/x", ["AWS_ENDPOINT_URL": "http://127.0.0.1:\(closed)"],
                "Connection refused"
            ),
            ("s3://\(SeaweedFS.bucketName)/x", ["DALLAGE_DB": ""], "needs an explicit database"),
            ("s3://\(SeaweedFS.bucketName)/x", ["AWS_ACCESS_KEY_ID": ""], "no credentials"),
        ]
        for (store, changes, reason) in cases {
            var environment = base.merging(changes) { $1 }
            environment = environment.filter { !$0.value.isEmpty }
            let (status, output) = try await Self.serve(
                binary, ["serve", "--store", store, "--port", String(try freePorts(1)[0])], environment: environment)
            let lines = output.split(separator: "\n")
            #expect(status != 0, "\(reason): \(output)")
            #expect(lines.count == 1 && output.hasPrefix("Error: store '\(store)'"), "\(reason): \(output)")
            #expect(output.contains(reason), "\(reason): \(output)")
            #expect(!output.contains("not-the-secret") && !output.contains(SeaweedFS.secretKey), "\(output)")
        }
    }

    /// Runs the server until it exits (on a Dispatch thread), with exactly `environment` for the
    /// AWS and DALLAGE variables: its status and what it wrote to its standard error.
    static func serve(_ binary: String, _ arguments: [String], environment: [String: String]) async throws -> (
        Int32, String
    ) {
        try await Blocking.run {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = arguments
            var env = ProcessInfo.processInfo.environment.filter {
                !$0.key.hasPrefix("AWS_") && !$0.key.hasPrefix("DALLAGE_")
            }
            env.merge(environment) { $1 }
            p.environment = env
            p.currentDirectoryURL = URL(fileURLWithPath: NSTemporaryDirectory())
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let data = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: data, as: UTF8.self))
        }
    }
}

/// The S3 settings of the server's configuration, read from a file and the environment.
struct S3ConfigurationTests {
    @Test func diskCacheIndexCacheAndExtractsFolderAreRead() throws {
        let path = NSTemporaryDirectory() + "dallage-\(UUID().uuidString).yaml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try
            "store: s3://ortho/hdf\ntile_disk_cache: {path: /var/cache/dallage, bytes: 1048576}\nshard_index_cache_bytes: 4096\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let file = try ServerConfiguration.load(path: path)
        #expect(file.tileDiskCache == ServerConfiguration.DiskCache(path: "/var/cache/dallage", bytes: 1 << 20))
        #expect(file.shardIndexCacheBytes == 4096 && file.storeIsObjectStore)
        #expect(ServerConfiguration().tileDiskCache == nil && !ServerConfiguration().storeIsObjectStore)
        let merged = file.merged(environment: ["DALLAGE_EXTRACTS_DIR": "/srv/extracts"], flags: .init())
        #expect(merged.extractsDirectory == "/srv/extracts" && merged.extractsPath == "/srv/extracts")
        try "tile_disk_cache: {path: /tmp/x, bytes: 0}\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { try ServerConfiguration.load(path: path) }
    }
}

import Foundation
import GeoGrid
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Pyramid
import Synchronization
import TestSupport
import Testing
import Tiler

@testable import Serving

/// A pyramid rebuilt under a server's feet: every answer is one generation's tile, whole.
@Suite struct GenerationServingTests {
    /// What the clients under load received, and the flag that stops them.
    final class Load: Sendable {
        let answers = Mutex<[(TileCoordinate, HTTPResponse.Status, [UInt8], String?)]>([])
        let stop = Atomic<Bool>(false)
        /// False while only the far tiles are asked: the rebuilt shard is then first opened while
        /// the build runs, after its new file is written and before the switch.
        let all = Atomic<Bool>(false)
    }

    /// Whether a file under `folder` was written since `date`.
    static func written(under folder: String, since date: Date) -> Bool {
        let e = FileManager.default.enumerator(atPath: folder)
        while let f = e?.nextObject() as? String {
            let attributes = try? FileManager.default.attributesOfItem(atPath: folder + "/" + f)
            if f.hasSuffix(".tif"), let m = attributes?[.modificationDate] as? Date, m >= date { return true }
        }
        return false
    }

    /// Builds (or rebuilds) tileset `pcrs` on 2154_5cm from `sources`, on `Blocking.queue`.
    static func tile(_ sources: [String], store: String) async throws {
        try await Blocking.run {
            var options = TileOptions(store: store, tmsDirectory: ServerFixture.root + "/config/tms")
            options.threads = 2
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            _ = try Tiler(
                definition: TilesetDefinition(id: "pcrs", sources: sources, grids: ["2154_5cm"]),
                options: options, logger: logger, progress: Progress(logger: logger, interactive: false)
            ).run()
        }
    }

    /// Each tile's stored bytes and ETag in the generation `pyramid.json` names now (nil: none).
    static func expected(_ pyramid: String, _ tiles: [TileCoordinate]) throws -> [TileCoordinate: StoredBytes<[UInt8]>]
    {
        let reader = try PyramidReader(directory: pyramid)
        var out: [TileCoordinate: StoredBytes<[UInt8]>] = [:]
        for t in tiles {
            let read = try reader.readStoredTile(t) { count, fill -> [UInt8] in
                var b = [UInt8](repeating: 0, count: count)
                try b.withUnsafeMutableBytes { try fill($0) }
                return b
            }
            if let read { out[t] = StoredBytes(bytes: read.bytes, etag: read.etag) }
        }
        return out
    }

    @Test func loadDuringARebuildSeesOneWholeGenerationOrTheOther() async throws {
        let dir = NSTemporaryDirectory() + "dallage-generations-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The small area, and a dalle 2 km away in a shard of its own.
        var far = SampleData.small
        (far.columns, far.rows, far.origin) = (1, 1, (706_000, 7_058_000))
        let first = try SampleData.small.write(to: dir + "/src") + far.write(to: dir + "/far")
        var tranche = SampleData.small
        (tranche.columns, tranche.rows, tranche.origin) = (1, 2, (704_051.2, 7_060_000))
        let added = try tranche.write(to: dir + "/tranche")
        try await Self.tile(first, store: dir + "/store")
        let pyramid = dir + "/store/pcrs/2154_5cm"
        let tms = try PyramidManifest.load(directory: pyramid).tileMatrixSet

        // Every tile from z8 to z22 over the small area and its tranche, and over the far dalle.
        let areas = [
            BoundingBox(minX: 704_000, minY: 7_059_948.8, maxX: 704_076.8, maxY: 7_060_000),
            BoundingBox(minX: 706_000, minY: 7_057_974.4, maxX: 706_025.6, maxY: 7_058_000),
        ]
        let tiles = (8...22).flatMap { z in areas.flatMap { tms.tiles(covering: $0, z: z)?.tiles ?? [] } }
        let old = try Self.expected(pyramid, tiles)
        let farTiles = Set(tiles.filter { areas[1].intersects(tms.bounds(of: $0)) })
        let catalog = PyramidCatalog(store: FolderStore(dir + "/store"), logger: Logger(label: "test"))
        let oldServed = try #require(catalog.pyramid("pcrs", grid: "2154_5cm"))

        try await ServerFixture.app(store: dir + "/store").test(.live) { client in
            let port = try #require(client.port)
            let load = Load()
            // One round over the tiles of the band above before the build: answers of the old
            // generation for tiles the tranche changes, whatever the timing of what follows.
            for t in tiles where t.z < 15 {
                let r = try await client.execute(uri: "/tiles/pcrs/2154_5cm/\(t.z)/\(t.col)/\(t.row).jpg", method: .get)
                {
                    ($0.status, Array(buffer: $0.body), $0.headers[.eTag])
                }
                load.answers.withLock { $0.append((t, r.0, r.1, r.2)) }
            }
            // Four clients asking for every tile in turn, each on its connection, all along (the
            // deepest band's shard only once the build has written its new version).
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<4 {
                    group.addTask {
                        try await TestClient.withClient(host: "127.0.0.1", port: port) { c in
                            var k = i
                            while !load.stop.load(ordering: .relaxed) {
                                let t = tiles[k % tiles.count]
                                k += 1
                                guard load.all.load(ordering: .relaxed) || farTiles.contains(t) || t.z < 15 else {
                                    continue
                                }
                                let r = try await c.execute(
                                    .init("/tiles/pcrs/2154_5cm/\(t.z)/\(t.col)/\(t.row).jpg", method: .get))
                                load.answers.withLock {
                                    $0.append(
                                        (
                                            t, r.head.status, Array(buffer: r.body ?? ByteBuffer()),
                                            r.head.headerFields[.eTag]
                                        ))
                                }
                            }
                        }
                    }
                }
                // The tranche tiled while they ask; the whole area asked for as soon as the build
                // has written its first shard of the deepest band.
                let started = Date()
                async let rebuilt: Void = Self.tile(first + added, store: dir + "/store")
                try await eventually("the first rebuilt shard", every: .milliseconds(5)) {
                    Self.written(under: pyramid + "/shards/15", since: started)
                }
                load.all.store(true, ordering: .relaxed)
                try await rebuilt
                let new = try Self.expected(pyramid, tiles)
                let changed = try #require(tiles.first { new[$0]?.etag != old[$0]?.etag && new[$0] != nil })
                try await eventually("the new generation to be served") {
                    try await client.execute(
                        uri: "/tiles/pcrs/2154_5cm/\(changed.z)/\(changed.col)/\(changed.row).jpg", method: .get
                    ) {
                        $0.headers[.eTag]
                    } == new[changed]?.etag
                }
                // A few more rounds on the new generation, then stop.
                let seen = load.answers.withLock { $0.count }
                try await eventually("more rounds") { load.answers.withLock { $0.count } > seen + 2 * tiles.count }
                load.stop.store(true, ordering: .relaxed)
                try await group.waitForAll()

                // Every answer is the old generation's tile or the new one's, with its own ETag.
                var fromOld = 0
                var fromNew = 0
                for (t, status, body, etag) in load.answers.withLock({ $0 }) {
                    #expect(status.code < 500, "\(t): \(status)")
                    let matches = { (g: StoredBytes<[UInt8]>?) in
                        if let g { status == .ok && body == g.bytes && etag == g.etag } else { status == .notFound }
                    }
                    let (o, n) = (matches(old[t]), matches(new[t]))
                    #expect(o || n, "\(t): \(status) \(etag ?? "-") is neither generation's")
                    if o && !n { fromOld += 1 }
                    if n && !o { fromNew += 1 }
                }
                #expect(fromOld > 0 && fromNew > 0, "answers from the old: \(fromOld), from the new: \(fromNew)")

                // The far shard was not rebuilt: its tiles keep their bytes, ETags and cache key.
                catalog.rescan()
                let newServed = try #require(catalog.pyramid("pcrs", grid: "2154_5cm"))
                #expect(newServed !== oldServed)
                #expect(!farTiles.isEmpty)
                for t in farTiles where old[t] != nil && t.z >= 15 {
                    #expect(new[t]?.etag == old[t]?.etag && new[t]?.bytes == old[t]?.bytes)
                    #expect(newServed.contentKey(of: t) == oldServed.contentKey(of: t))
                }
                #expect(newServed.contentKey(of: changed) != oldServed.contentKey(of: changed))
            }
        }
    }
}

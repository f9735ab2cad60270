import Foundation
import GeoGrid
import Logging
import Pyramid
import Synchronization

/// One servable pyramid: its manifest and where its tiles are read.
public final class ServedPyramid: Sendable {
    public let tileset: String
    public let grid: String
    public let source: any PyramidSource
    /// The store's stamp of `pyramid.json` when loaded: a change means a rebuild.
    let stamp: Double
    /// The source's manifest, kept here: read in place, never copied per request.
    public let manifest: PyramidManifest
    /// The encoding of the stored streams.
    public let storedEncoding: TileEncoding
    /// Served only inside published perimeters (`publish: by-status`).
    public let gated: Bool

    /// What the tile chain checks of a level: its matrix size and the data's limits there.
    public struct Level: Sendable {
        public var width: Int
        public var height: Int
        public var limits: PyramidManifest.LevelLimits?
    }
    /// By level number, nil for levels the grid does not have.
    private let levels: [Level?]
    /// Each shard's content key: the same for the same file in every generation that lists it
    /// (a shard is never rewritten under its path), so caches keyed by it survive a rebuild for
    /// every shard it did not touch.
    private let shardKeys: [TileCoordinate: UInt64]

    init(tileset: String, grid: String, source: any PyramidSource, stamp: Double) {
        self.tileset = tileset
        self.grid = grid
        self.source = source
        self.stamp = stamp
        let manifest = source.manifest
        self.manifest = manifest
        storedEncoding = manifest.format == .jpeg ? .jpeg : .webp
        gated = manifest.publish == .byStatus
        levels = manifest.tileMatrixSet.tileMatrices.indices.map { z in
            manifest.tileMatrixSet.matrix(z).map {
                Level(width: $0.matrixWidth, height: $0.matrixHeight, limits: manifest.limits(z: z))
            }
        }
        shardKeys = Dictionary(
            manifest.shards.map { ($0.coordinate, Self.contentKey(tileset, grid, $0)) }, uniquingKeysWith: { a, _ in a }
        )
    }

    /// FNV-1a over the shard's identity: pyramid, file and checksum (64 bits: two different
    /// shards meet on one key for the same tile with odds of 2⁻⁶⁴).
    static func contentKey(_ tileset: String, _ grid: String, _ shard: PyramidManifest.Shard) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(tileset)/\(grid)/\(shard.path)#\(shard.crc32)/\(shard.bytes)".utf8 {
            h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return h
    }

    /// The content key of the shard holding `tile`; nil when the pyramid has no shard there.
    public func contentKey(of tile: TileCoordinate) -> UInt64? {
        guard let shard = manifest.shardScheme.locate(tile)?.shard else { return nil }
        return shardKeys[shard]
    }

    /// Level `z`'s size and limits; nil when the grid has no such level.
    public func level(_ z: Int) -> Level? { levels.indices.contains(z) ? levels[z] : nil }
}

/// The catalog as it was at one moment: the pyramids by tileset and grid, and the catalog's version
/// then. Request handlers resolve against a snapshot; the fast lane keeps one per connection and
/// takes a new one when the version moves.
public struct CatalogSnapshot: Sendable {
    public let version: Int
    public let pyramids: [String: [String: ServedPyramid]]

    public static let empty = CatalogSnapshot(version: -1, pyramids: [:])
}

/// Every pyramid of the store, rescanned periodically: a pyramid that appears or is rebuilt is
/// served without a restart. Cold start reads only the `pyramid.json` files, never a shard.
public final class PyramidCatalog: Sendable {
    public let store: any PyramidStore
    let openShards: Int
    let logger: Logger
    private let state = Mutex<[String: [String: ServedPyramid]]>([:])
    /// Bumped after every change of `state`: request handlers keep a copy of the map and read this
    /// counter, lock-free, to know when to refresh it.
    private let changes = Atomic<Int>(0)

    public init(store: any PyramidStore, openShards: Int = 4096, logger: Logger) {
        self.store = store
        self.openShards = openShards
        self.logger = logger
        rescan()
    }

    /// The pyramid of `tileset` on `grid`.
    public func pyramid(_ tileset: String, grid: String) -> ServedPyramid? {
        state.withLock { $0[tileset]?[grid] }
    }

    /// The pyramids as they are now, with the change counter.
    public func snapshot() -> CatalogSnapshot {
        let version = changes.load(ordering: .acquiring)
        return CatalogSnapshot(version: version, pyramids: state.withLock { $0 })
    }

    /// The change counter alone: equal to a snapshot's version while that snapshot is current.
    public var version: Int { changes.load(ordering: .acquiring) }

    /// Tileset ids, sorted.
    public var tilesets: [String] { state.withLock { $0.keys.sorted() } }

    /// Pyramids of one tileset by grid id.
    public func pyramids(of tileset: String) -> [ServedPyramid] {
        state.withLock { ($0[tileset] ?? [:]).values.sorted { $0.grid < $1.grid } }
    }

    /// All pyramids, by tileset then grid.
    public var all: [ServedPyramid] {
        state.withLock { s in s.keys.sorted().flatMap { t in (s[t] ?? [:]).values.sorted { $0.grid < $1.grid } } }
    }

    /// Tilesets served only inside published project perimeters (`publish: by-status`).
    public var gatedTilesets: [String] {
        state.withLock { s in
            s.keys.sorted().filter { t in (s[t] ?? [:]).values.contains { $0.manifest.publish == .byStatus } }
        }
    }

    /// Looks for new, rebuilt and removed pyramids.
    public func rescan() {
        let found: [PyramidListing]
        do {
            found = try store.list()
        } catch {
            // A store that cannot be listed now: keep serving what was found before.
            logger.error("cannot list the store \(store.location): \(error)")
            return
        }
        let current = state.withLock { $0 }
        var next: [String: [String: ServedPyramid]] = [:]
        var changed = found.count != current.values.reduce(0) { $0 + $1.count }
        for listing in found {
            let (tileset, grid) = (listing.tileset, listing.grid)
            if let old = current[tileset]?[grid], old.stamp == listing.stamp {
                next[tileset, default: [:]][grid] = old
                continue
            }
            changed = true
            do {
                let source = try store.open(listing, openShards: openShards)
                next[tileset, default: [:]][grid] = ServedPyramid(
                    tileset: tileset, grid: grid, source: source, stamp: listing.stamp)
                logger.info(
                    "\(current[tileset]?[grid] == nil ? "serving" : "reloaded") \(tileset)/\(grid): \(source.manifest.shards.count) shard(s)"
                )
            } catch {
                // A half-written or broken manifest: keep serving the previous version, if any.
                if let old = current[tileset]?[grid] { next[tileset, default: [:]][grid] = old }
                logger.error("cannot load \(tileset)/\(grid)/pyramid.json from \(store.location): \(error)")
            }
        }
        guard changed else { return }
        state.withLock { $0 = next }
        changes.add(1, ordering: .releasing)
    }

    /// Rescans every `interval` seconds until cancelled.
    public func watch(every interval: Double) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
            rescan()
        }
    }
}

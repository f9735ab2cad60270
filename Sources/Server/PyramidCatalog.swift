import Foundation
import GeoGrid
import Logging
import Pyramid
import Synchronization

/// One servable pyramid: its manifest and a reader that maps shards on first use.
public final class ServedPyramid: Sendable {
    public let tileset: String
    public let grid: String
    public let reader: PyramidReader
    /// Modification time of `pyramid.json` when loaded: a change means a rebuild.
    let stamp: Double

    var manifest: PyramidManifest { reader.manifest }

    init(tileset: String, grid: String, reader: PyramidReader, stamp: Double) {
        self.tileset = tileset
        self.grid = grid
        self.reader = reader
        self.stamp = stamp
    }
}

/// Every pyramid of the store, rescanned periodically: a pyramid that appears or is rebuilt is
/// served without a restart. Cold start reads only the `pyramid.json` files, never a shard.
public final class PyramidCatalog: Sendable {
    public let store: String
    let openShards: Int
    let logger: Logger
    private let state = Mutex<[String: [String: ServedPyramid]]>([:])
    /// Bumped after every change of `state`: request handlers keep a copy of the map and read this
    /// counter, lock-free, to know when to refresh it.
    private let changes = Atomic<Int>(0)

    public init(store: String, openShards: Int = 4096, logger: Logger) {
        self.store = store
        self.openShards = openShards
        self.logger = logger
        rescan()
    }

    /// The pyramid of `tileset` on `grid`.
    public func pyramid(_ tileset: String, grid: String) -> ServedPyramid? {
        state.withLock { $0[tileset]?[grid] }
    }

    /// The change counter, then the map of pyramids by tileset and grid as it is now.
    public func snapshot() -> (version: Int, pyramids: [String: [String: ServedPyramid]]) {
        let version = changes.load(ordering: .acquiring)
        return (version, state.withLock { $0 })
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
        let fm = FileManager.default
        var found: [String: [String: Double]] = [:]
        for tileset in (try? fm.contentsOfDirectory(atPath: store)) ?? [] where !tileset.hasPrefix(".") {
            let tdir = (store as NSString).appendingPathComponent(tileset)
            for grid in (try? fm.contentsOfDirectory(atPath: tdir)) ?? [] where !grid.hasPrefix(".") {
                let file = (tdir as NSString).appendingPathComponent(grid + "/" + PyramidManifest.fileName)
                var st = stat()
                guard stat(file, &st) == 0 else { continue }
                found[tileset, default: [:]][grid] = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
            }
        }
        let current = state.withLock { $0 }
        var next: [String: [String: ServedPyramid]] = [:]
        var changed = found.values.reduce(0) { $0 + $1.count } != current.values.reduce(0) { $0 + $1.count }
        for (tileset, grids) in found {
            for (grid, stamp) in grids {
                if let old = current[tileset]?[grid], old.stamp == stamp {
                    next[tileset, default: [:]][grid] = old
                    continue
                }
                changed = true
                let dir = (store as NSString).appendingPathComponent("\(tileset)/\(grid)")
                do {
                    let reader = try PyramidReader(directory: dir, openLimit: openShards)
                    next[tileset, default: [:]][grid] = ServedPyramid(
                        tileset: tileset, grid: grid, reader: reader, stamp: stamp)
                    logger.info(
                        "\(current[tileset]?[grid] == nil ? "serving" : "reloaded") \(tileset)/\(grid): \(reader.manifest.shards.count) shard(s)"
                    )
                } catch {
                    // A half-written or broken manifest: keep serving the previous version, if any.
                    if let old = current[tileset]?[grid] { next[tileset, default: [:]][grid] = old }
                    logger.error("cannot load \(dir)/pyramid.json: \(error)")
                }
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

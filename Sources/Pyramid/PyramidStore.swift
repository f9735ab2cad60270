import Foundation
import GeoGrid
import Raster

/// A stored tile's bytes and their strong validator.
public struct StoredBytes<Bytes: Sendable>: Sendable {
    public var bytes: Bytes
    public var etag: String

    public init(bytes: Bytes, etag: String) {
        self.bytes = bytes
        self.etag = etag
    }
}

/// The answer of a non-blocking read: now, when the store has the bytes at hand (a local folder),
/// or later (an object store, which answers over the network).
public enum TileRead<Bytes: Sendable>: Sendable {
    /// The tile, nil when the pyramid has none there; or why it cannot be read.
    case ready(Result<StoredBytes<Bytes>?, ShardError>)
    /// Awaited by callers that may wait; a caller that may not (an event loop) hands the request
    /// to one that may.
    case later(@Sendable () async throws(ShardError) -> StoredBytes<Bytes>?)

    /// The tile, waiting when the store answers later.
    public func value() async throws(ShardError) -> StoredBytes<Bytes>? {
        switch self {
        case .ready(let result): try result.get()
        case .later(let read): try await read()
        }
    }
}

/// Fills `count` bytes of memory the caller allocates: the serving core reads a tile straight into
/// the buffer it will send.
public typealias TileAllocator<Bytes> =
    @Sendable (
        _ count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void
    ) throws -> Bytes

/// One pyramid of a store, as the readers of tiles see it.
public protocol PyramidSource: AnyObject, Sendable {
    var manifest: PyramidManifest { get }

    /// The stored bytes of a tile (a complete JPEG or WebP stream) with a validator, without
    /// blocking: the tile chain of the server runs on event loops.
    func storedTile<Bytes: Sendable>(_ tile: TileCoordinate, into allocate: @escaping TileAllocator<Bytes>)
        -> TileRead<Bytes>

    /// A tile as RGBA pixels, alpha from the mask; nil when absent. May block: called by work run
    /// off the event loops (transcoding, WMS maps, extracts).
    func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]?

    /// Calls `body` with the stored bytes of a tile and its stored mask (nil when every pixel is
    /// valid); nil when there is no tile. May block, like `decodeTile`.
    func withTileAndMask<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ mask: UnsafeRawBufferPointer?) throws -> R
    ) throws -> R?

    /// How much of a tile holds data, from the shard's index and the tile's mask (a small read,
    /// no decoding): what the stacked view of a layer needs to know whether older vintages show.
    func cover(_ tile: TileCoordinate) throws -> TileCover

    /// The tiled footprint (Lambert-93) the tiler wrote beside the manifest, nil when there is none.
    func tiledFootprint() throws -> Geometry?

    /// Whether reads may wait on the network (an object store): then the methods that may block
    /// must not be called where nothing may wait (an event loop), and are better run off the
    /// cooperative threads.
    var answersLater: Bool { get }
}

extension PyramidSource {
    /// A local store answers at once.
    public var answersLater: Bool { false }
}

/// A source whose tiles are made from others (a layer's stacked view), never stored: readers
/// that copy stored tiles as they are (tile-aligned extracts) decode them instead.
public protocol CompositeSource: PyramidSource {}

/// How much of a stored tile has data.
public enum TileCover: Sendable, Equatable {
    /// No tile there.
    case absent
    /// Every pixel valid.
    case full
    /// Some pixels valid (the tile has a partial mask).
    case partial
}

/// One pyramid a store holds, and a stamp that changes when it is rebuilt.
public struct PyramidListing: Sendable, Hashable {
    public var tileset: String
    public var grid: String
    /// Changes with every new `pyramid.json` (its modification time in a folder).
    public var stamp: Double

    public init(tileset: String, grid: String, stamp: Double) {
        self.tileset = tileset
        self.grid = grid
        self.stamp = stamp
    }
}

/// Where pyramids are kept: `<tileset>/<grid>/pyramid.json` and its shards, in a local folder
/// (`FolderStore`) or an S3-compatible bucket (`S3Store`). Readers find pyramids through `list()`
/// and shards only through a manifest.
public protocol PyramidStore: Sendable {
    /// The store as the user named it (a folder path, an `s3://` URL).
    var location: String { get }
    /// The pyramids there now. May block (an object store answers over the network).
    func list() throws -> [PyramidListing]
    /// Opens one; `openShards` bounds the shards kept open at once. May block.
    func open(_ pyramid: PyramidListing, openShards: Int) throws -> any PyramidSource
    /// A small file of the store by its path relative to the store (`<tileset>/sources.json`),
    /// nil when there is none. May block.
    func read(_ relativePath: String) throws -> Data?
}

extension PyramidStore {
    /// A store without files beside its pyramids.
    public func read(_ relativePath: String) throws -> Data? { nil }
}

/// A store in a local folder: listing reads directories and stats manifests; tiles are read with
/// `pread` from shards kept open, so reads answer at once.
public struct FolderStore: PyramidStore {
    public let location: String

    public init(_ path: String) { location = path }

    public func directory(tileset: String, grid: String) -> String {
        (location as NSString).appendingPathComponent("\(tileset)/\(grid)")
    }

    public func list() throws -> [PyramidListing] {
        let fm = FileManager.default
        var found: [PyramidListing] = []
        for tileset in (try? fm.contentsOfDirectory(atPath: location)) ?? [] where !tileset.hasPrefix(".") {
            let tdir = (location as NSString).appendingPathComponent(tileset)
            for grid in (try? fm.contentsOfDirectory(atPath: tdir)) ?? [] where !grid.hasPrefix(".") {
                let file = (tdir as NSString).appendingPathComponent(grid + "/" + PyramidManifest.fileName)
                var st = stat()
                guard stat(file, &st) == 0 else { continue }
                let stamp = Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
                found.append(PyramidListing(tileset: tileset, grid: grid, stamp: stamp))
            }
        }
        return found
    }

    public func open(_ pyramid: PyramidListing, openShards: Int) throws -> any PyramidSource {
        try PyramidReader(directory: directory(tileset: pyramid.tileset, grid: pyramid.grid), openLimit: openShards)
    }

    public func read(_ relativePath: String) throws -> Data? {
        let path = (location as NSString).appendingPathComponent(relativePath)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try Data(contentsOf: URL(fileURLWithPath: path))
    }
}

extension PyramidReader: PyramidSource {
    public func storedTile<Bytes: Sendable>(
        _ tile: TileCoordinate, into allocate: @escaping TileAllocator<Bytes>
    ) -> TileRead<Bytes> {
        do {
            return .ready(.success(try readStoredTile(tile, into: allocate).map { StoredBytes(bytes: $0, etag: $1) }))
        } catch let e as ShardError {
            return .ready(.failure(e))
        } catch {
            return .ready(.failure(ShardError(path: directory, reason: "\(error)")))
        }
    }

    public func tiledFootprint() throws -> Geometry? {
        let path = (directory as NSString).appendingPathComponent(TiledFootprint.fileName)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try TiledFootprint.read(path: path)
    }
}

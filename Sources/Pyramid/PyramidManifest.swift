import Foundation
import GeoGrid

/// `pyramid.json`: everything a reader needs to serve or check one pyramid without listing files.
public struct PyramidManifest: Sendable, Codable {
    /// Tiles present at one level, as an inclusive column/row rectangle.
    public struct LevelLimits: Sendable, Codable, Hashable {
        public var z: Int
        public var minCol: Int
        public var maxCol: Int
        public var minRow: Int
        public var maxRow: Int

        public init(z: Int, minCol: Int, maxCol: Int, minRow: Int, maxRow: Int) {
            self.z = z
            self.minCol = minCol
            self.maxCol = maxCol
            self.minRow = minRow
            self.maxRow = maxRow
        }
    }

    /// One shard file that exists.
    public struct Shard: Sendable, Codable, Hashable {
        public var z: Int
        public var col: Int
        public var row: Int
        public var path: String
        public var bytes: Int
        /// CRC-32 of the whole file, 8 hex digits.
        public var crc32: String
        public var tiles: Int

        public init(z: Int, col: Int, row: Int, path: String, bytes: Int, crc32: String, tiles: Int) {
            self.z = z
            self.col = col
            self.row = row
            self.path = path
            self.bytes = bytes
            self.crc32 = crc32
            self.tiles = tiles
        }

        public var coordinate: TileCoordinate { TileCoordinate(z: z, col: col, row: row) }
    }

    /// 1 before generations, 2 since (see `PyramidFolder.formatVersion`).
    public var formatVersion = 1
    /// The build this manifest switched to: +1 per build or rollback; nil in format 1.
    public var generation: Int?
    /// For a rollback, the generation whose shards it serves again.
    public var restores: Int?
    public var tileset: String
    /// Human-facing description from the tileset file, shown in capabilities and TileJSON.
    public var title: String?
    public var abstract: String?
    public var attribution: String?
    /// The layer this tileset is a vintage of, and which (`layer:` and `vintage:` of the tileset
    /// file); both nil for a tileset that stands alone.
    public var layer: String?
    public var vintage: Vintage?
    /// Who may see the tiles; absent in manifests written before the field existed, which
    /// means `.all`.
    public var publish: Publication?
    public var tileMatrixSet: TileMatrixSet
    public var tileSize: Int
    public var format: TileFormat
    public var quality: Int
    public var resampling: String
    public var minZoom: Int
    public var maxZoom: Int
    public var levels: [LevelLimits]
    /// Bounds of the data in the grid's CRS and in WGS84 (longitude, latitude).
    public var bounds: BoundingBox
    public var wgs84Bounds: BoundingBox
    public var shardScheme: ShardScheme
    public var shards: [Shard]
    public var sourcesDigest: String
    public var created: String
    public var tool: String

    /// The file name inside a pyramid directory.
    public static let fileName = "pyramid.json"

    public init(
        tileset: String, tileMatrixSet: TileMatrixSet, tileSize: Int, format: TileFormat, quality: Int,
        resampling: String, minZoom: Int, maxZoom: Int, levels: [LevelLimits], bounds: BoundingBox,
        wgs84Bounds: BoundingBox, shardScheme: ShardScheme, shards: [Shard], sourcesDigest: String, created: String,
        tool: String
    ) {
        self.tileset = tileset
        self.tileMatrixSet = tileMatrixSet
        self.tileSize = tileSize
        self.format = format
        self.quality = quality
        self.resampling = resampling
        self.minZoom = minZoom
        self.maxZoom = maxZoom
        self.levels = levels
        self.bounds = bounds
        self.wgs84Bounds = wgs84Bounds
        self.shardScheme = shardScheme
        self.shards = shards
        self.sourcesDigest = sourcesDigest
        self.created = created
        self.tool = tool
    }

    /// Reads `pyramid.json` from a pyramid directory; a folder without one is said to be no
    /// pyramid, with what a pyramid's path looks like.
    public static func load(directory: String) throws -> PyramidManifest {
        let path = (directory as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: path) else {
            throw ManifestError(
                "\(directory) is not a pyramid: it has no \(fileName) (a pyramid is STORE/TILESET/GRID, e.g. demo/store/demo/2154_5cm)"
            )
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        do {
            return try JSONDecoder().decode(PyramidManifest.self, from: data)
        } catch {
            throw ManifestError("\(path) is not a pyramid manifest: \(error)")
        }
    }

    /// Writes `pyramid.json` atomically (temporary file, then rename), with no check of what it
    /// replaces: for stores made outside the tiler (tests, exports). Builds commit through
    /// `PyramidFolder.commit`.
    public func save(directory: String) throws {
        try PyramidFolder.writeAtomically(
            try PyramidFolder.encode(self, pretty: true),
            to: (directory as NSString).appendingPathComponent(Self.fileName))
    }

    /// The limits of level `z`, nil when the pyramid has no tile there.
    public func limits(z: Int) -> LevelLimits? { levels.first { $0.z == z } }
}

/// A pyramid folder without a readable manifest.
public struct ManifestError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) { self.description = description }
}

/// The tile matrix sets a deployment knows: every `*.json` of a folder (`config/tms`).
public struct TileMatrixSetCatalog: Sendable {
    public var sets: [String: TileMatrixSet]

    public init(sets: [TileMatrixSet]) {
        self.sets = Dictionary(sets.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Loads every grid in `directory`; a broken file is an error naming the file.
    public static func load(directory: String) throws -> TileMatrixSetCatalog {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isFolder), isFolder.boolValue else {
            throw GridError.noFolder(directory)
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }
            .sorted()
        var sets: [TileMatrixSet] = []
        for f in files {
            let path = (directory as NSString).appendingPathComponent(f)
            do {
                sets.append(try TileMatrixSet.decode(Data(contentsOf: URL(fileURLWithPath: path))))
            } catch {
                throw ShardError(path: path, reason: "not a valid OGC TMS 2.0 document: \(error)")
            }
        }
        return TileMatrixSetCatalog(sets: sets)
    }

    /// The grid named `id`, also accepting IGN's level-limited names like `2154_5cm_6_22`.
    public func grid(_ id: String) -> (tms: TileMatrixSet, minZoom: Int?, maxZoom: Int?)? {
        if let t = sets[id] { return (t, nil, nil) }
        let parts = id.split(separator: "_")
        guard parts.count >= 3, let a = Int(parts[parts.count - 2]), let b = Int(parts[parts.count - 1]), a <= b
        else { return nil }
        let base = parts.dropLast(2).joined(separator: "_")
        guard let t = sets[base], b <= t.maxZoom else { return nil }
        return (t, a, b)
    }
}

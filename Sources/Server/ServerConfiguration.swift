import Coverage
import Foundation
import Pyramid
import Render
import Serving
import Yams

/// The server's settings: a YAML file, then `DALLAGE_*` environment variables, then flags,
/// merged in `merged(environment:flags:)`.
public struct ServerConfiguration: Codable, Sendable, Equatable {
    /// What to answer for a tile the pyramid does not have.
    public typealias EmptyTile = ServingSettings.EmptyTile

    public var host: String = ServerConfiguration.defaultHost
    public var port: Int = ServerConfiguration.defaultPort
    /// The store of pyramids (`<store>/<tileset>/<grid>/pyramid.json`).
    public var store: String = "store"
    /// The folder of OGC TMS 2.0 grids.
    public var tmsDirectory: String = "config/tms"
    /// The public base URL written in capabilities and TileJSON; by default from the request's Host.
    public var publicURL: String?
    /// In-memory cache of transcoded tiles (PNG, WebP, clipped), in bytes.
    public var tileCacheBytes: Int = ServerConfiguration.defaultTileCacheBytes
    /// The memory, in bytes in all, for the stored tiles the fast lane keeps ready (0: none), shared
    /// by the event loops: the buffers as allocated are counted, not only the tiles' bytes.
    public var hotTileCacheBytes: Int = ServerConfiguration.defaultHotTileCacheBytes
    /// Shards kept mapped at once (each holds a file descriptor and a mapping).
    public var openShards: Int = 4096
    /// `Cache-Control` for tiles, per tileset id; `*` applies to the others.
    public var cacheControl: [String: String] = ["*": ServerConfiguration.defaultCacheControl]
    public var emptyTile: EmptyTile = .notFound
    /// Seconds between scans of the store for new or rebuilt pyramids.
    public var rescanSeconds: Double = 2
    /// The coverage database: a SQLite file (by default `dallage.sqlite` in the store) or a
    /// `postgres://user:password@host:port/db?sslmode=…` URL (`DatabaseLocation`).
    public var database: String?
    /// Administrator tokens, plain or `sha256:<hex>` (kept hashed in memory either way).
    public var adminTokens: [String] = []

    /// Where the installed Leaflet files are (Debian's libjs-leaflet).
    public var leafletPath = "/usr/share/javascript/leaflet"
    /// Largest WMS GetMap image side, in pixels.
    public var wmsMaxSize = 4096
    /// Most layers one WMS GetMap may draw (`LayerLimit` in the capabilities).
    public var wmsMaxLayers = ServerConfiguration.defaultWMSMaxLayers
    /// The grid a tileset is read from where one pyramid stands for all its grids: WMS GetMap in a
    /// CRS none of its grids is in, WMS capabilities, extracts, tiled progress. A tileset without
    /// a pyramid on it uses its first Lambert-93 grid, else its first grid (`preferredPyramid`).
    public var renderGrid = ServerConfiguration.defaultRenderGrid
    /// Connections open at once; beyond, a new connection is answered 503 and closed. Nil: from
    /// the process's file limit (half of it, at most 10,000).
    public var maxConnections: Int?
    /// Seconds a connection may stay open with no request under way.
    public var idleTimeoutSeconds: Double = ServerConfiguration.defaultIdleTimeoutSeconds
    /// Seconds from a request's first byte to the end of its head (slow clients get 408).
    public var headerTimeoutSeconds: Double = ServerConfiguration.defaultHeaderTimeoutSeconds
    /// Where queued extracts are kept: a folder (by default `.extracts` in a folder store), or
    /// `s3://bucket/prefix` (opened by `OpenedStore.open`), so that replicas need no shared folder.
    public var extractsDirectory: String?
    /// Seconds a finished extract stays downloadable.
    public var extractTTLSeconds: Double = 86_400
    /// Seconds a running extract job stays a server's without renewal: a server killed mid-job
    /// leaves its job to another after at most this long (kept within 1 s…1 h).
    public var extractJobLeaseSeconds = Double(ExtractSettings.defaultJobLease.components.seconds)
    /// Jobs queued or running per client at once, and bytes of results kept per client.
    public var extractJobsPerClient = 2
    public var extractBytesPerClient = 20 << 30
    public var extractLimits = ExtractLimits()
    /// Reverse proxies (addresses or networks such as `10.0.0.0/8`) whose `X-Forwarded-For` names
    /// the client; from anyone else the header is ignored and the connection's address counts.
    public var trustedProxies: [String] = []
    /// For an `s3://` store: tile bytes fetched from the bucket kept on local disk (`{path, bytes}`);
    /// nil for none.
    public var tileDiskCache: DiskCache?
    /// For an `s3://` store: bytes of shard indexes kept in memory (each shard's first tile costs
    /// one more GET, for its index, until it is evicted).
    public var shardIndexCacheBytes: Int = ServerConfiguration.defaultShardIndexCacheBytes

    /// A folder on local disk and the most bytes kept there.
    public struct DiskCache: Codable, Sendable, Equatable {
        /// The folder (created if needed; only its `*.tile` files are the cache's).
        public var path: String
        /// The most bytes of tiles kept.
        public var bytes: Int

        /// `bytes` at most in `path`.
        public init(path: String, bytes: Int) {
            self.path = path
            self.bytes = bytes
        }
    }

    /// Whether the store is in an object store (`s3://`): then the database and the extracts'
    /// folder cannot default to places inside it.
    public var storeIsObjectStore: Bool {
        if case .s3? = try? StoreLocation(parsing: store) { return true }
        return false
    }

    public var extractsPath: String {
        extractsDirectory ?? (store as NSString).appendingPathComponent(".extracts")
    }

    /// The database path or URL this configuration uses.
    public var databasePath: String { database ?? (store as NSString).appendingPathComponent("dallage.sqlite") }

    /// The database this configuration uses, read: a malformed URL or an unknown scheme is an error.
    public func databaseLocation() throws(CoverageError) -> DatabaseLocation {
        try DatabaseLocation(parsing: databasePath)
    }

    public static let defaultHost = "127.0.0.1"
    public static let defaultPort = 8080
    public static let defaultTileCacheBytes = ServingSettings.defaultTileCacheBytes
    public static let defaultHotTileCacheBytes = 256 << 20
    public static let defaultCacheControl = ServingSettings.defaultCacheControl
    public static let defaultWMSMaxLayers = 16
    public static let defaultRenderGrid = Pyramid.defaultRenderGrid
    public static let defaultIdleTimeoutSeconds = 60.0
    public static let defaultHeaderTimeoutSeconds = 10.0
    public static let defaultShardIndexCacheBytes = S3StoreSettings.defaultIndexCacheBytes

    enum CodingKeys: String, CodingKey {
        case host, port, store
        case tmsDirectory = "tms_dir"
        case publicURL = "public_url"
        case tileCacheBytes = "tile_cache_bytes"
        case hotTileCacheBytes = "hot_tile_cache_bytes"
        case openShards = "open_shards"
        case cacheControl = "cache_control"
        case emptyTile = "empty_tile"
        case rescanSeconds = "rescan_seconds"
        case database
        case adminTokens = "admin_tokens"
        case wmsMaxSize = "wms_max_size"
        case wmsMaxLayers = "wms_max_layers"
        case renderGrid = "render_grid"
        case maxConnections = "max_connections"
        case idleTimeoutSeconds = "idle_timeout_seconds"
        case headerTimeoutSeconds = "header_timeout_seconds"
        case leafletPath = "leaflet_path"
        case extractsDirectory = "extracts_dir"
        case extractTTLSeconds = "extract_ttl_seconds"
        case extractJobLeaseSeconds = "extract_job_lease_seconds"
        case extractJobsPerClient = "extract_jobs_per_client"
        case extractBytesPerClient = "extract_bytes_per_client"
        case extractLimits = "extract_limits"
        case trustedProxies = "trusted_proxies"
        case tileDiskCache = "tile_disk_cache"
        case shardIndexCacheBytes = "shard_index_cache_bytes"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = ServerConfiguration()
        host = try c.decodeIfPresent(String.self, forKey: .host) ?? d.host
        port = try c.decodeIfPresent(Int.self, forKey: .port) ?? d.port
        store = try c.decodeIfPresent(String.self, forKey: .store) ?? d.store
        tmsDirectory = try c.decodeIfPresent(String.self, forKey: .tmsDirectory) ?? d.tmsDirectory
        publicURL = try c.decodeIfPresent(String.self, forKey: .publicURL)
        tileCacheBytes = try c.decodeIfPresent(Int.self, forKey: .tileCacheBytes) ?? d.tileCacheBytes
        hotTileCacheBytes = try c.decodeIfPresent(Int.self, forKey: .hotTileCacheBytes) ?? d.hotTileCacheBytes
        openShards = try c.decodeIfPresent(Int.self, forKey: .openShards) ?? d.openShards
        cacheControl = try c.decodeIfPresent([String: String].self, forKey: .cacheControl) ?? d.cacheControl
        emptyTile = try c.decodeIfPresent(EmptyTile.self, forKey: .emptyTile) ?? d.emptyTile
        rescanSeconds = try c.decodeIfPresent(Double.self, forKey: .rescanSeconds) ?? d.rescanSeconds
        database = try c.decodeIfPresent(String.self, forKey: .database)
        adminTokens = try c.decodeIfPresent([String].self, forKey: .adminTokens) ?? []
        wmsMaxSize = try c.decodeIfPresent(Int.self, forKey: .wmsMaxSize) ?? d.wmsMaxSize
        wmsMaxLayers = try c.decodeIfPresent(Int.self, forKey: .wmsMaxLayers) ?? d.wmsMaxLayers
        renderGrid = try c.decodeIfPresent(String.self, forKey: .renderGrid) ?? d.renderGrid
        maxConnections = try c.decodeIfPresent(Int.self, forKey: .maxConnections)
        idleTimeoutSeconds = try c.decodeIfPresent(Double.self, forKey: .idleTimeoutSeconds) ?? d.idleTimeoutSeconds
        headerTimeoutSeconds =
            try c.decodeIfPresent(Double.self, forKey: .headerTimeoutSeconds) ?? d.headerTimeoutSeconds
        leafletPath = try c.decodeIfPresent(String.self, forKey: .leafletPath) ?? d.leafletPath
        extractsDirectory = try c.decodeIfPresent(String.self, forKey: .extractsDirectory)
        extractTTLSeconds = try c.decodeIfPresent(Double.self, forKey: .extractTTLSeconds) ?? d.extractTTLSeconds
        extractJobLeaseSeconds =
            try c.decodeIfPresent(Double.self, forKey: .extractJobLeaseSeconds) ?? d.extractJobLeaseSeconds
        extractJobsPerClient = try c.decodeIfPresent(Int.self, forKey: .extractJobsPerClient) ?? d.extractJobsPerClient
        extractBytesPerClient =
            try c.decodeIfPresent(Int.self, forKey: .extractBytesPerClient) ?? d.extractBytesPerClient
        extractLimits = try c.decodeIfPresent(ExtractLimits.self, forKey: .extractLimits) ?? d.extractLimits
        trustedProxies = try c.decodeIfPresent([String].self, forKey: .trustedProxies) ?? []
        tileDiskCache = try c.decodeIfPresent(DiskCache.self, forKey: .tileDiskCache)
        shardIndexCacheBytes =
            try c.decodeIfPresent(Int.self, forKey: .shardIndexCacheBytes) ?? d.shardIndexCacheBytes
        if let cache = tileDiskCache, cache.bytes <= 0 || cache.path.isEmpty {
            throw DecodingError.dataCorruptedError(
                forKey: .tileDiskCache, in: c, debugDescription: "tile_disk_cache needs a path and bytes > 0")
        }
        do { _ = try AddressRanges(trustedProxies) } catch {
            throw DecodingError.dataCorruptedError(
                forKey: .trustedProxies, in: c, debugDescription: "trusted_proxies: \(error)")
        }
    }

    /// Reads a configuration file; a missing file is an error only when it was asked for.
    public static func load(path: String) throws -> ServerConfiguration {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try YAMLDecoder().decode(ServerConfiguration.self, from: text)
    }

    /// Command-line values; nil means "not given".
    public struct Flags: Sendable {
        public var host: String?
        public var port: Int?
        public var store: String?
        public var tmsDirectory: String?
        public init(host: String? = nil, port: Int? = nil, store: String? = nil, tmsDirectory: String? = nil) {
            self.host = host
            self.port = port
            self.store = store
            self.tmsDirectory = tmsDirectory
        }
    }

    /// File values, overridden by the environment, overridden by flags: the one place they meet.
    public func merged(environment: [String: String], flags: Flags) -> ServerConfiguration {
        var c = self
        if let v = environment["DALLAGE_HOST"] { c.host = v }
        if let v = environment["DALLAGE_PORT"].flatMap({ Int($0) }) { c.port = v }
        if let v = environment["DALLAGE_STORE"] { c.store = v }
        if let v = environment["DALLAGE_TMS_DIR"] { c.tmsDirectory = v }
        if let v = environment["DALLAGE_PUBLIC_URL"] { c.publicURL = v }
        if let v = environment["DALLAGE_TILE_CACHE_BYTES"].flatMap({ Int($0) }) { c.tileCacheBytes = v }
        if let v = environment["DALLAGE_HOT_TILE_CACHE_BYTES"].flatMap({ Int($0) }) { c.hotTileCacheBytes = v }
        if let v = environment["DALLAGE_DB"] { c.database = v }
        if let v = environment["DALLAGE_EXTRACTS_DIR"], !v.isEmpty { c.extractsDirectory = v }
        if let v = environment["DALLAGE_ADMIN_TOKEN"], !v.isEmpty { c.adminTokens.append(v) }
        if let v = flags.host { c.host = v }
        if let v = flags.port { c.port = v }
        if let v = flags.store { c.store = v }
        if let v = flags.tmsDirectory { c.tmsDirectory = v }
        return c
    }

    /// The `Cache-Control` value for a tileset's tiles.
    public func cacheControl(for tileset: String) -> String { serving.cacheControl(for: tileset) }

    /// What the serving core takes from this configuration.
    public var serving: ServingSettings {
        var s = ServingSettings()
        s.tileCacheBytes = tileCacheBytes
        s.cacheControl = cacheControl
        s.emptyTile = emptyTile
        return s
    }

    /// What the extract service takes from this configuration.
    public var extracts: ExtractSettings {
        var s = ExtractSettings(directory: extractsPath)
        s.ttlSeconds = extractTTLSeconds
        s.jobsPerClient = extractJobsPerClient
        let lease = extractJobLeaseSeconds.isNaN ? 30 : min(max(extractJobLeaseSeconds, 1), 3600)
        s.jobLease = .milliseconds(Int(lease * 1000))
        s.bytesPerClient = extractBytesPerClient
        s.limits = extractLimits
        s.renderGrid = renderGrid
        return s
    }
}

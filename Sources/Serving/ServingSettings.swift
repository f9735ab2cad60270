import Foundation
import Pyramid
import Render

/// What the serving core needs to know of the configuration: cache sizes, caching headers, empty
/// tiles. The server's configuration file and the command line both make one.
public struct ServingSettings: Sendable, Equatable {
    /// What to answer for a tile the pyramid does not have.
    public enum EmptyTile: String, Codable, Sendable {
        case notFound = "404"
        case blank
    }

    /// In-memory cache of transcoded tiles (PNG, WebP, clipped), in bytes.
    public var tileCacheBytes = ServingSettings.defaultTileCacheBytes
    /// `Cache-Control` for tiles, per tileset id; `*` applies to the others.
    public var cacheControl: [String: String] = ["*": ServingSettings.defaultCacheControl]
    public var emptyTile: EmptyTile = .notFound

    public static let defaultTileCacheBytes = 256 << 20
    public static let defaultCacheControl = "public, max-age=3600"

    public init() {}

    /// The `Cache-Control` value for a tileset's tiles.
    public func cacheControl(for tileset: String) -> String {
        cacheControl[tileset] ?? cacheControl["*"] ?? Self.defaultCacheControl
    }
}

/// Where extracts are written and how much each client may ask for.
public struct ExtractSettings: Sendable, Equatable {
    /// Where queued extracts are written.
    public var directory: String
    /// Seconds a finished extract stays downloadable.
    public var ttlSeconds: Double = 86_400
    /// Jobs queued or running per client at once, and bytes of results kept per client.
    public var jobsPerClient = 2
    public var bytesPerClient = 20 << 30
    public var limits = ExtractLimits()
    /// The grid whose pyramid extracts read (`preferredPyramid`).
    public var renderGrid = defaultRenderGrid
    /// How long a running job stays this server's without a renewal (renewed every third of
    /// it): a server killed mid-job leaves it to another server after at most this long.
    public var jobLease = ExtractSettings.defaultJobLease
    /// 30 s: a killed server's job waits at most that long; a renewal every 10 s is no load.
    public static let defaultJobLease = Duration.seconds(30)

    public init(directory: String) { self.directory = directory }
}

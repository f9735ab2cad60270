import Foundation
import Logging
import Pyramid
import S3

/// The store a server configuration names, opened and checked: a folder, or a bucket reached
/// through the process's one S3 client (closed by ``close()``).
public struct OpenedStore: Sendable {
    /// Where the pyramids are read.
    public let store: any PyramidStore
    /// The S3 client of an `s3://` store.
    let client: S3Client?

    /// Opens the store of `configuration`. An `s3://` store needs an explicit database and
    /// extracts folder (neither can live in a bucket), credentials in `environment`, and a bucket
    /// that answers them: each failure throws one line saying what to fix, within the client's
    /// connect timeout, never a hang.
    public static func open(
        _ configuration: ServerConfiguration, environment: [String: String], logger: Logger
    ) async throws(StoreStartError) -> OpenedStore {
        let location: StoreLocation
        do { location = try StoreLocation(parsing: configuration.store) } catch {
            throw StoreStartError(error.description)
        }
        guard case .s3(let bucketName, let prefix) = location else {
            guard FileManager.default.fileExists(atPath: configuration.store) else {
                throw StoreStartError(
                    "store '\(configuration.store)' does not exist (tile something first: dallage tile …)")
            }
            return OpenedStore(store: FolderStore(configuration.store), client: nil)
        }
        guard configuration.database != nil else {
            throw StoreStartError(
                "store '\(location)': an s3:// store needs an explicit database (database: in the configuration or DALLAGE_DB: a SQLite file or a postgres:// URL)"
            )
        }
        guard configuration.extractsDirectory != nil else {
            throw StoreStartError(
                "store '\(location)': an s3:// store needs an extracts folder (extracts_dir: in the configuration or DALLAGE_EXTRACTS_DIR: a local or shared folder for extract results)"
            )
        }
        var s3: S3Configuration
        do { s3 = try S3Configuration(environment: environment) } catch {
            throw StoreStartError("store '\(location)': \(error)")
        }
        // A tile request waits for its GETs: a store that stalls is given up on in seconds (a
        // shard's head, the largest read, is about 350 kB), not in the minutes a tiler's upload
        // of a large part may need.
        s3.readTimeout = Self.readTimeout
        s3.requestTimeout = Self.requestTimeout
        s3.maxAttempts = Self.maxAttempts
        var settings = S3StoreSettings()
        settings.indexCacheBytes = max(0, configuration.shardIndexCacheBytes)
        if let cache = configuration.tileDiskCache {
            do {
                settings.diskCache = try TileDiskCache(directory: cache.path, capacity: cache.bytes)
            } catch {
                throw StoreStartError("tile_disk_cache '\(cache.path)' cannot be used: \(error.localizedDescription)")
            }
        }
        let client: S3Client
        do { client = try S3Client(configuration: s3, logger: logger) } catch {
            throw StoreStartError("store '\(location)': \(error)")
        }
        let store = S3Store(bucket: client.bucket(bucketName), prefix: prefix, settings: settings, logger: logger)
        do {
            try await store.check()
        } catch {
            try? await client.shutdown()
            throw StoreStartError("store '\(location)' cannot be read (\(s3.endpoint)): \(error)")
        }
        return OpenedStore(store: store, client: client)
    }

    /// How long a GET may stall, take in all, and how often it is tried, for a server.
    public static let readTimeout: Duration = .seconds(10)
    public static let requestTimeout: Duration = .seconds(20)
    public static let maxAttempts = 3

    /// Closes the S3 client's connections, if any.
    public func close() async {
        try? await client?.shutdown()
    }
}

/// A store that cannot be served, and why, in one line for a person.
public struct StoreStartError: Error, Sendable, CustomStringConvertible {
    /// What is wrong and what to do.
    public var description: String

    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

import Foundation
import Logging
import Pyramid
import S3
import Serving

/// The store a server configuration names, opened and checked: a folder, or a bucket reached
/// through the process's one S3 client (closed by ``close()``); and where extract results go, a
/// folder or a prefix in a bucket (`extracts_dir`).
public struct OpenedStore: Sendable {
    /// Where the pyramids are read.
    public let store: any PyramidStore
    /// Where finished extracts are kept.
    public let extractResults: any ExtractResultStore
    /// The process's S3 client: the one of an `s3://` store or extracts folder, else one made from
    /// the AWS environment when it names credentials (for source dalles in a bucket), else nil.
    public let client: S3Client?

    /// Opens the store and the extracts folder of `configuration`. An `s3://` store needs an
    /// explicit database and extracts folder (neither can default to a place in a bucket);
    /// either in a bucket needs credentials in `environment` and a bucket that answers them: each
    /// failure throws one line saying what to fix, within the client's connect timeout, never a hang.
    public static func open(
        _ configuration: ServerConfiguration, environment: [String: String], logger: Logger
    ) async throws(StoreStartError) -> OpenedStore {
        let location: StoreLocation
        do { location = try StoreLocation(parsing: configuration.store) } catch {
            throw StoreStartError(error.description)
        }
        let extracts: StoreLocation
        do { extracts = try StoreLocation(parsing: configuration.extractsPath) } catch {
            throw StoreStartError(
                "extracts_dir '\(configuration.extractsPath)': \(error.reason) (a folder or s3://bucket/prefix)")
        }
        if case .folder = location {
            guard FileManager.default.fileExists(atPath: configuration.store) else {
                throw StoreStartError(
                    "store '\(configuration.store)' does not exist (tile something first: dallage tile …)")
            }
        } else {
            guard configuration.database != nil else {
                throw StoreStartError(
                    "store '\(location)': an s3:// store needs an explicit database (database: in the configuration or DALLAGE_DB: a SQLite file or a postgres:// URL)"
                )
            }
            guard configuration.extractsDirectory != nil else {
                throw StoreStartError(
                    "store '\(location)': an s3:// store needs an explicit extracts_dir (extracts_dir: in the configuration or DALLAGE_EXTRACTS_DIR: a local or shared folder, or s3://bucket/prefix)"
                )
            }
        }
        // What needs the client names it in its errors.
        let needsClient: String? =
            if case .s3 = location { "store '\(location)'" } else if case .s3 = extracts {
                "extracts_dir '\(extracts)'"
            } else { nil }
        var s3: S3Configuration
        do { s3 = try S3Configuration(environment: environment) } catch {
            guard let needsClient else {
                // Nothing of the server is in a bucket, and no credentials: dalles named s3://
                // cannot be zipped, as they could not be tiled.
                return OpenedStore(
                    store: FolderStore(configuration.store),
                    extractResults: FolderExtractResults(directory: configuration.extractsPath), client: nil)
            }
            throw StoreStartError("\(needsClient): \(error)")
        }
        // A tile request waits for its GETs: a store that stalls is given up on in seconds (a
        // shard's head, the largest read, is about 350 kB), not in the minutes a tiler's upload
        // of a large part may need.
        s3.readTimeout = Self.readTimeout
        s3.requestTimeout = Self.requestTimeout
        s3.maxAttempts = Self.maxAttempts
        let client: S3Client
        do { client = try S3Client(configuration: s3, logger: logger) } catch {
            guard let needsClient else {
                // Only dalles in a bucket would have needed it: they answer 503, the rest is served.
                logger.warning("no S3 client for dalles in a bucket: \(error)")
                return OpenedStore(
                    store: FolderStore(configuration.store),
                    extractResults: FolderExtractResults(directory: configuration.extractsPath), client: nil)
            }
            throw StoreStartError("\(needsClient): \(error)")
        }
        do throws(StoreStartError) {
            let store: any PyramidStore
            switch location {
            case .folder(let path):
                store = FolderStore(path)
            case .s3(let bucketName, let prefix):
                var settings = S3StoreSettings()
                settings.indexCacheBytes = max(0, configuration.shardIndexCacheBytes)
                if let cache = configuration.tileDiskCache {
                    do {
                        settings.diskCache = try TileDiskCache(directory: cache.path, capacity: cache.bytes)
                    } catch {
                        throw StoreStartError(
                            "tile_disk_cache '\(cache.path)' cannot be used: \(error.localizedDescription)")
                    }
                }
                let s3Store = S3Store(
                    bucket: client.bucket(bucketName), prefix: prefix, settings: settings, logger: logger)
                do {
                    try await s3Store.check()
                } catch {
                    throw StoreStartError("store '\(location)' cannot be read (\(s3.endpoint)): \(error)")
                }
                store = s3Store
            }
            let results: any ExtractResultStore
            switch extracts {
            case .folder(let path):
                results = FolderExtractResults(directory: path)
            case .s3(let bucketName, let prefix):
                let bucket = BucketExtractResults(bucket: client.bucket(bucketName), prefix: prefix)
                do {
                    try await bucket.check()
                } catch {
                    throw StoreStartError("extracts_dir '\(extracts)' cannot be used (\(s3.endpoint)): \(error)")
                }
                results = bucket
            }
            return OpenedStore(store: store, extractResults: results, client: client)
        } catch {
            try? await client.shutdown()
            throw error
        }
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

import Foundation
import Logging
import Pyramid
import S3

/// Where the results of queued extracts are kept for download (`extracts_dir`): a folder every
/// replica sees, or a prefix in a bucket. Either way a job is rendered into a local file first
/// (GDAL writes files), under a hidden name that becomes the result only once complete.
public protocol ExtractResultStore: Sendable, CustomStringConvertible {
    /// The local folder where jobs are rendered and direct extracts written.
    var workDirectory: String { get }
    /// The local file a job's result named `name` (`<id>.tif`) is rendered to.
    func renderPath(_ name: String) -> String
    /// Makes the file rendered at `renderPath(name)` the downloadable result `name`, and returns
    /// its size in bytes.
    func keep(_ name: String) async throws -> Int
    /// Deletes the result `name`; one that is already gone is not an error.
    func remove(_ name: String) async throws
    /// Whether every file of `workDirectory` is temporary (results are kept elsewhere): then one
    /// left by a server killed before its upload is deleted after an hour, as other temporary files.
    var workFilesAreTemporary: Bool { get }
}

/// Results in a folder (the default, `<store>/.extracts`): rendered in place, served as files.
public struct FolderExtractResults: ExtractResultStore {
    /// The folder.
    public let directory: String

    /// Results in `directory`.
    public init(directory: String) { self.directory = directory }

    public var workDirectory: String { directory }
    public var description: String { directory }
    public var workFilesAreTemporary: Bool { false }

    public func renderPath(_ name: String) -> String { directory + "/" + name }

    public func keep(_ name: String) async throws -> Int {
        (try? FileManager.default.attributesOfItem(atPath: renderPath(name))[.size] as? Int) ?? 0
    }

    public func remove(_ name: String) async throws {
        try? FileManager.default.removeItem(atPath: renderPath(name))
    }
}

/// Results under a prefix of a bucket (`extracts_dir: s3://bucket/prefix`), so that any replica
/// serves any download without a shared folder. A job is rendered in a local staging folder, then
/// uploaded (one PUT, or a multipart upload above 64 MiB: either makes the object appear whole or
/// not at all, so no partial result is ever visible under its name) and the local file removed.
public struct BucketExtractResults: ExtractResultStore {
    /// The bucket and the key prefix (no trailing `/`, empty for the root).
    public let bucket: S3Bucket
    public let prefix: String
    /// The local folder where results are rendered before upload.
    public let staging: String

    /// Results under `prefix` in `bucket`, rendered in `staging` (by default
    /// `TMPDIR/dallage-extracts/<bucket>/<prefix>`).
    public init(bucket: S3Bucket, prefix: String, staging: String? = nil) {
        self.bucket = bucket
        self.prefix = prefix
        self.staging =
            staging
            ?? (NSTemporaryDirectory() as NSString).appendingPathComponent(
                "dallage-extracts/\(bucket.name)" + (prefix.isEmpty ? "" : "/\(prefix)"))
    }

    /// Parts of 64 MiB, as the tiler uploads shards: few requests, one part in memory at a time.
    static let partSize = 64 << 20

    public var workDirectory: String { staging }
    public var workFilesAreTemporary: Bool { true }
    public var description: String { prefix.isEmpty ? "s3://\(bucket.name)" : "s3://\(bucket.name)/\(prefix)" }

    /// The object key of the result `name`.
    public func key(_ name: String) -> String { prefix.isEmpty ? name : "\(prefix)/\(name)" }

    public func renderPath(_ name: String) -> String { staging + "/" + name }

    public func keep(_ name: String) async throws -> Int {
        let path = renderPath(name)
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        try await bucket.upload(file: path, to: key(name), partSize: Self.partSize)
        try? FileManager.default.removeItem(atPath: path)
        return size
    }

    public func remove(_ name: String) async throws {
        try await bucket.delete(key(name))
    }

    /// A reader of the result `name` (its size and ETag from one HEAD); nil when there is none.
    public func reader(_ name: String) async throws(S3Error) -> S3ObjectReader? {
        do {
            return try await S3ObjectReader(bucket: bucket, key: key(name))
        } catch  where error.kind == .notFound {
            return nil
        }
    }

    /// Checks that the bucket answers with these credentials (one listing of at most one key) and
    /// that the staging folder can be made: wrong credentials or a missing bucket throw the
    /// client's one-line `S3Error` within its connect timeout.
    public func check() async throws {
        _ = try await bucket.listPage(prefix: prefix.isEmpty ? "" : prefix + "/", delimiter: "/", maxKeys: 1)
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
    }
}

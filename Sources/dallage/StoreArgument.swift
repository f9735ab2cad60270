import ArgumentParser
import Foundation
import Pyramid
import S3

/// The local folder a store (or a pyramid) names, from `--store`, `DALLAGE_STORE`, `store:` or an
/// argument. A URL of another scheme is refused rather than taken for a folder name; an `s3://`
/// store is refused too, clearly, until this command reads and writes object storage.
func localFolder(_ text: String, command: String? = nil) throws -> String {
    let location: StoreLocation
    do {
        location = try StoreLocation(parsing: text)
    } catch {
        throw ValidationError(error.description)
    }
    switch location {
    case .folder(let path):
        return path
    case .s3:
        let by = command.map { "`dallage \($0)`" } ?? "this command"
        throw ValidationError(
            "store '\(location)': S3 stores are not yet supported by \(by) (only a local folder for now)")
    }
}

/// A store as the user named it, checked: a folder path as written, or an `s3://` URL in its
/// normal form; any other scheme is refused.
func storeName(_ text: String) throws -> String {
    do {
        return try StoreLocation(parsing: text).description
    } catch {
        throw ValidationError(error.description)
    }
}

/// A pyramid named on the command line (`STORE/TILESET/GRID`): a folder, or its key prefix in a
/// bucket (`s3://bucket/store/demo/PM`).
enum PyramidArgument {
    case folder(String)
    case bucket(name: String, prefix: String)

    init(_ text: String) throws {
        do {
            switch try StoreLocation(parsing: text) {
            case .folder(let path): self = .folder(path)
            case .s3(let bucket, let prefix): self = .bucket(name: bucket, prefix: prefix)
            }
        } catch {
            throw ValidationError(error.description)
        }
    }
}

/// Runs `body` on a pyramid in a bucket, with a client from the AWS environment (closed after),
/// waiting for it: the commands are synchronous.
func withBucketPyramid<R: Sendable>(
    name: String, prefix: String, _ body: @escaping @Sendable (BucketPyramid) async throws -> R
) throws -> R {
    let configuration: S3Configuration
    do {
        configuration = try S3Configuration(environment: ProcessInfo.processInfo.environment)
    } catch {
        throw ValidationError("s3://\(name)/\(prefix): \(error)")
    }
    return try waitFor {
        try await S3Client.withClient(configuration: configuration) { client in
            try await body(BucketPyramid(bucket: client.bucket(name), prefix: prefix))
        }
    }
}

/// Runs synchronous `body` with a bucket reached through a client from the AWS environment (shut
/// down after): for commands whose work waits for S3 itself (`waitFor`), from the main thread.
func withBucket<R>(name: String, prefix: String, _ body: (S3Bucket) throws -> R) throws -> R {
    let configuration: S3Configuration
    do {
        configuration = try S3Configuration(environment: ProcessInfo.processInfo.environment)
    } catch {
        throw ValidationError("s3://\(name)/\(prefix): \(error)")
    }
    let client: S3Client
    do { client = try S3Client(configuration: configuration) } catch {
        throw ValidationError("s3://\(name)/\(prefix): \(error)")
    }
    defer { _ = try? waitFor { try await client.shutdown() } }
    return try body(client.bucket(name))
}

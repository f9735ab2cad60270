import Foundation
import NIOCore
import NIOHTTP1

/// An object's bytes as a GET returned them.
public struct S3Object: Sendable {
    /// The bytes: the whole object, or the range asked for (shorter when the object ends first).
    public var bytes: ByteBuffer
    /// The object's ETag as the store sent it (quoted).
    public var etag: String
    /// The whole object's size in bytes, from `Content-Range` for a ranged read.
    public var totalSize: Int
    /// Where `bytes` start in the object.
    public var offset: Int
}

/// What a HEAD tells of an object.
public struct S3ObjectInfo: Sendable, Equatable {
    /// The object's size in bytes.
    public var size: Int
    /// The object's ETag (quoted).
    public var etag: String
    /// `Last-Modified` as the store wrote it.
    public var lastModified: String?
}

/// One object of a listing.
public struct S3ObjectSummary: Sendable, Equatable {
    /// The full key.
    public var key: String
    /// Its size in bytes.
    public var size: Int
    /// Its ETag (quoted).
    public var etag: String
    /// `LastModified` as the store wrote it (ISO 8601).
    public var lastModified: String
}

/// One page of a ListObjectsV2 listing.
public struct S3ListPage: Sendable, Equatable {
    /// Objects, in key order.
    public var objects: [S3ObjectSummary]
    /// With a delimiter: the key prefixes up to and including the next delimiter ("folders").
    public var commonPrefixes: [String]
    /// Where the next page starts; nil on the last page.
    public var continuationToken: String?
}

/// A multipart upload begun and not yet completed or aborted.
public struct S3MultipartUpload: Sendable, Equatable {
    /// The key the object will have.
    public var key: String
    /// The store's id of the upload.
    public var uploadID: String
}

/// A part uploaded: its number (1…10000) and the ETag completing the upload needs.
public struct S3UploadedPart: Sendable, Equatable {
    /// Its place in the object, from 1.
    public var number: Int
    /// The ETag the store gave it.
    public var etag: String
}

/// A bucket of an endpoint: the object operations. Keys are given decoded (`a b/ሴ.tif`); each path
/// segment is percent-encoded on the way, `/` kept.
public struct S3Bucket: Sendable {
    /// The client that sends the requests.
    public let client: S3Client
    /// The bucket's name.
    public let name: String

    /// The most bytes a GET without range keeps: a manifest or a record, not a shard.
    public static let defaultMaxObjectBytes = 64 << 20
    /// S3's smallest part but the last (5 MiB), which SeaweedFS enforces too (`EntityTooSmall`).
    public static let minimumPartSize = 5 << 20
    /// S3's most parts in one upload.
    public static let maximumParts = 10_000
    /// 8 MiB, as the AWS CLI: few requests per shard, and bounded memory (one part at a time).
    public static let defaultPartSize = 8 << 20

    /// The object's bytes, or `range` of them, with its ETag and total size. A GET without range
    /// refuses objects longer than `maxBytes` (`invalidResponse`).
    public func get(_ key: String, range: Range<Int>? = nil, maxBytes: Int = Self.defaultMaxObjectBytes)
        async throws(S3Error) -> S3Object
    {
        var call = S3Client.Call(operation: "GET", method: .GET, bucket: name, key: key, idempotent: true)
        if let range {
            precondition(!range.isEmpty && range.lowerBound >= 0, "a ranged read asks for at least one byte")
            call.headers.append(("range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)"))
            call.maxResponseBytes = range.count
        } else {
            call.maxResponseBytes = maxBytes
        }
        let answer = try await client.send(call)
        let etag = answer.headers.first(name: "etag") ?? ""
        var bytes = answer.body
        if answer.status == 206 {
            guard let contentRange = answer.headers.first(name: "content-range"),
                let (start, total) = Self.parseContentRange(contentRange), start == (range?.lowerBound ?? 0)
            else {
                throw invalid(call, "206 without a Content-Range for the range asked")
            }
            return S3Object(bytes: bytes, etag: etag, totalSize: total ?? bytes.readableBytes, offset: start)
        }
        // A 200 to a ranged read (a store that ignores Range): keep the range asked.
        let total = bytes.readableBytes
        if let range {
            let start = min(range.lowerBound, total)
            bytes = bytes.getSlice(at: bytes.readerIndex + start, length: min(range.upperBound, total) - start) ?? bytes
            return S3Object(bytes: bytes, etag: etag, totalSize: total, offset: start)
        }
        return S3Object(bytes: bytes, etag: etag, totalSize: total, offset: 0)
    }

    /// The size and ETag of an object (`notFound` when there is none).
    public func head(_ key: String) async throws(S3Error) -> S3ObjectInfo {
        let call = S3Client.Call(operation: "HEAD", method: .HEAD, bucket: name, key: key, idempotent: true)
        let answer = try await client.send(call)
        guard let length = answer.headers.first(name: "content-length").flatMap({ Int($0) }) else {
            throw invalid(call, "HEAD without Content-Length")
        }
        return S3ObjectInfo(
            size: length, etag: answer.headers.first(name: "etag") ?? "",
            lastModified: answer.headers.first(name: "last-modified"))
    }

    /// Stores `bytes` as one object in one request, and returns its ETag. With `ifNoneMatch: "*"`
    /// the store refuses to replace an existing object, with `ifMatch: etag` to replace any object
    /// but that one (`preconditionFailed`, both honoured by AWS since 2024 and by SeaweedFS): such a
    /// PUT is not retried after a lost connection, since its own first attempt may have landed.
    @discardableResult
    public func put(
        _ key: String, _ bytes: ByteBuffer, ifNoneMatch: String? = nil, ifMatch: String? = nil,
        contentType: String? = nil
    ) async throws(S3Error) -> String {
        var call = S3Client.Call(
            operation: "PUT", method: .PUT, bucket: name, key: key, body: bytes,
            idempotent: ifNoneMatch == nil && ifMatch == nil)
        if let ifNoneMatch { call.headers.append(("if-none-match", ifNoneMatch)) }
        if let ifMatch { call.headers.append(("if-match", ifMatch)) }
        if let contentType { call.headers.append(("content-type", contentType)) }
        let answer = try await client.send(call)
        return answer.headers.first(name: "etag") ?? ""
    }

    /// Creates the bucket (in the client's region); `BucketAlreadyOwnedByYou` is not an error.
    public func create() async throws(S3Error) {
        var call = S3Client.Call(operation: "CreateBucket", method: .PUT, bucket: name, idempotent: true)
        if client.configuration.region != S3Configuration.defaultRegion {
            call.body = ByteBuffer(
                string: "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                    + "<LocationConstraint>\(Self.xmlEscaped(client.configuration.region))</LocationConstraint>"
                    + "</CreateBucketConfiguration>")
        }
        do {
            _ = try await client.send(call)
        } catch  where error.code == "BucketAlreadyOwnedByYou" {
            return
        }
    }

    /// Removes an object; removing one that is not there succeeds (as S3 does).
    public func delete(_ key: String) async throws(S3Error) {
        _ = try await client.send(
            S3Client.Call(operation: "DELETE", method: .DELETE, bucket: name, key: key, idempotent: true))
    }

    // MARK: - Listing

    /// One page of the keys under `prefix` (ListObjectsV2), at most `maxKeys` (S3 caps it at 1000).
    public func listPage(
        prefix: String = "", delimiter: String? = nil, continuationToken: String? = nil, maxKeys: Int? = nil
    ) async throws(S3Error) -> S3ListPage {
        var call = S3Client.Call(operation: "ListObjectsV2", method: .GET, bucket: name, idempotent: true)
        call.query = [("list-type", "2"), ("prefix", prefix)]
        if let delimiter { call.query.append(("delimiter", delimiter)) }
        if let continuationToken { call.query.append(("continuation-token", continuationToken)) }
        if let maxKeys { call.query.append(("max-keys", String(maxKeys))) }
        call.maxResponseBytes = 16 << 20
        let answer = try await client.send(call)
        guard let xml = XMLTree.parse(Array(answer.body.readableBytesView)), xml.name == "ListBucketResult" else {
            throw invalid(call, "the listing is not a ListBucketResult document")
        }
        var objects: [S3ObjectSummary] = []
        for item in xml.children("Contents") {
            guard let key = item.text("Key"), let size = item.text("Size").flatMap({ Int($0) }) else {
                throw invalid(call, "a listed object without Key or Size")
            }
            objects.append(
                S3ObjectSummary(
                    key: key, size: size, etag: item.text("ETag") ?? "", lastModified: item.text("LastModified") ?? ""))
        }
        let truncated = xml.text("IsTruncated") == "true"
        let next = xml.text("NextContinuationToken").flatMap { $0.isEmpty ? nil : $0 }
        if truncated && next == nil { throw invalid(call, "a truncated listing without NextContinuationToken") }
        return S3ListPage(
            objects: objects, commonPrefixes: xml.children("CommonPrefixes").compactMap { $0.text("Prefix") },
            continuationToken: truncated ? next : nil)
    }

    /// Every object under `prefix`, page after page.
    public func list(prefix: String = "", pageSize: Int? = nil) async throws(S3Error) -> [S3ObjectSummary] {
        var all: [S3ObjectSummary] = []
        var token: String?
        var seen: Set<String> = []
        repeat {
            let page = try await listPage(prefix: prefix, continuationToken: token, maxKeys: pageSize)
            all += page.objects
            token = page.continuationToken
            // A store that hands back a token twice would list forever.
            if let token, !seen.insert(token).inserted {
                throw S3Error(
                    kind: .invalidResponse, operation: "ListObjectsV2", resource: "s3://\(name)/\(prefix)",
                    message: "the same continuation token came twice")
            }
        } while token != nil
        return all
    }

    // MARK: - Multipart upload

    /// Begins a multipart upload of `key`.
    public func createMultipartUpload(_ key: String, contentType: String? = nil) async throws(S3Error)
        -> S3MultipartUpload
    {
        var call = S3Client.Call(
            operation: "CreateMultipartUpload", method: .POST, bucket: name, key: key, idempotent: false)
        call.query = [("uploads", "")]
        if let contentType { call.headers.append(("content-type", contentType)) }
        let answer = try await client.send(call)
        guard let xml = XMLTree.parse(Array(answer.body.readableBytesView)),
            let id = xml.text("UploadId"), !id.isEmpty
        else { throw invalid(call, "no UploadId in the answer") }
        return S3MultipartUpload(key: key, uploadID: id)
    }

    /// Uploads part `number` (from 1) of an upload; every part but the last must be at least 5 MiB.
    public func uploadPart(_ upload: S3MultipartUpload, number: Int, _ bytes: ByteBuffer) async throws(S3Error)
        -> S3UploadedPart
    {
        var call = S3Client.Call(
            operation: "UploadPart", method: .PUT, bucket: name, key: upload.key, body: bytes, idempotent: true)
        call.query = [("partNumber", String(number)), ("uploadId", upload.uploadID)]
        let answer = try await client.send(call)
        guard let etag = answer.headers.first(name: "etag") else { throw invalid(call, "a part without ETag") }
        return S3UploadedPart(number: number, etag: etag)
    }

    /// Makes the object of the parts, in part order, and returns its ETag. S3 may answer 200 and
    /// an error in the body: that is an error here.
    @discardableResult
    public func completeMultipartUpload(_ upload: S3MultipartUpload, parts: [S3UploadedPart]) async throws(S3Error)
        -> String
    {
        var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for part in parts.sorted(by: { $0.number < $1.number }) {
            xml += "<Part><PartNumber>\(part.number)</PartNumber><ETag>\(Self.xmlEscaped(part.etag))</ETag></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        var call = S3Client.Call(
            operation: "CompleteMultipartUpload", method: .POST, bucket: name, key: upload.key,
            body: ByteBuffer(string: xml), idempotent: false)
        call.query = [("uploadId", upload.uploadID)]
        call.headers.append(("content-type", "application/xml"))
        let answer = try await client.send(call)
        guard let result = XMLTree.parse(Array(answer.body.readableBytesView)) else {
            throw invalid(call, "the answer is not XML")
        }
        if result.name == "Error" {
            throw client.errorAnswer(status: 200, headers: answer.headers, body: answer.body, call)
        }
        return result.text("ETag") ?? ""
    }

    /// Abandons an upload and frees its parts; an upload already gone is not an error.
    public func abortMultipartUpload(_ upload: S3MultipartUpload) async throws(S3Error) {
        var call = S3Client.Call(
            operation: "AbortMultipartUpload", method: .DELETE, bucket: name, key: upload.key, idempotent: true)
        call.query = [("uploadId", upload.uploadID)]
        do {
            _ = try await client.send(call)
        } catch  where error.code == "NoSuchUpload" {
            return
        }
    }

    /// Stores a local file as `key`: one PUT up to `partSize`, a multipart upload above, reading
    /// one part at a time (memory stays at one part whatever the file's size). A failed multipart
    /// upload is aborted, so no part is left behind and no object appears under `key`. Returns the
    /// object's ETag. Throws `S3Error`, or `LocalFileError` when the file cannot be read.
    @discardableResult
    public func upload(file path: String, to key: String, partSize: Int = Self.defaultPartSize) async throws
        -> String
    {
        precondition(partSize >= Self.minimumPartSize, "S3 parts are at least 5 MiB")
        let file = try LocalFile(readingAt: path)
        let size = try file.size()
        if size <= partSize {
            return try await put(key, try file.read(at: 0, count: size))
        }
        // 10 000 parts at most: a larger file takes larger parts.
        let part = max(partSize, (size + Self.maximumParts - 1) / Self.maximumParts)
        let upload = try await createMultipartUpload(key)
        do {
            var parts: [S3UploadedPart] = []
            var offset = 0
            while offset < size {
                let count = min(part, size - offset)
                let bytes = try file.read(at: offset, count: count)
                parts.append(try await uploadPart(upload, number: parts.count + 1, bytes))
                offset += count
            }
            return try await completeMultipartUpload(upload, parts: parts)
        } catch {
            do { try await abortMultipartUpload(upload) } catch let abort {
                client.logger.warning("could not abort the upload of \(key) after \(error): \(abort)")
            }
            throw error
        }
    }

    // MARK: - Helpers

    /// `bytes 0-9/1234` → (0, 1234); `bytes 0-9/*` → (0, nil).
    static func parseContentRange(_ value: String) -> (start: Int, total: Int?)? {
        let parts = value.trimmingCharacters(in: .whitespaces).split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bytes" else { return nil }
        let rangeAndTotal = parts[1].split(separator: "/", maxSplits: 1)
        guard rangeAndTotal.count == 2, let dash = rangeAndTotal[0].firstIndex(of: "-"),
            let start = Int(rangeAndTotal[0][..<dash])
        else { return nil }
        return (start, rangeAndTotal[1] == "*" ? nil : Int(rangeAndTotal[1]))
    }

    static func xmlEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    func invalid(_ call: S3Client.Call, _ message: String) -> S3Error {
        S3Error(kind: .invalidResponse, operation: call.operation, resource: call.resource, message: message)
    }
}

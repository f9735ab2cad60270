import Foundation
import NIOCore
import TestSupport
import Testing

@testable import S3

/// Bytes that differ everywhere, so a range off by one shows.
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= raw.count {
            raw.storeBytes(of: generator.next() as UInt64, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < raw.count {
            raw[i] = UInt8.random(in: 0...255, using: &generator)
            i += 1
        }
    }
    return bytes
}

/// The client's operations against a real S3 endpoint (SeaweedFS), checked with boto3 where what
/// landed matters.
@Suite(.seaweedFS)
struct SeaweedFSTests {
    var server: SeaweedFS {
        get throws { try #require(SeaweedFS.current, "the suite's SeaweedFS server") }
    }

    /// A key no other test uses.
    func key(_ name: String) -> String { "tests/\(UUID().uuidString)/\(name)" }

    func withBucket<R>(
        _ configuration: S3Configuration? = nil, bucket: String = SeaweedFS.bucketName,
        _ body: (S3Bucket) async throws -> R
    ) async throws -> R {
        let configuration = try configuration ?? server.configuration
        return try await S3Client.withClient(configuration: configuration) { client in
            try await body(client.bucket(bucket))
        }
    }

    @Test func putThenGetGivesTheSameBytesAndETag() async throws {
        let bytes = randomBytes(100_000)
        // A key with a space, a plus, an accent and a non-Latin letter: each must be encoded as
        // SigV4 wants, or the store refuses the signature.
        let key = key("été 2024+ሴ/0704_6618 (1).tif")
        try await withBucket { bucket in
            let etag = try await bucket.put(key, ByteBuffer(bytes: bytes))
            let object = try await bucket.get(key)
            #expect(Array(object.bytes.readableBytesView) == bytes)
            #expect(object.etag == etag)
            #expect(object.totalSize == bytes.count)
            let info = try await bucket.head(key)
            #expect(info.size == bytes.count)
            #expect(info.etag == etag)
        }
        // What landed, read by boto3: the same key, the same bytes.
        let printed = try await server.boto3(
            """
            import hashlib
            body = s3.get_object(Bucket=bucket, Key=sys.argv[1])["Body"].read()
            print(len(body), hashlib.sha256(body).hexdigest())
            """, arguments: [key])
        #expect(
            printed.trimmingCharacters(in: .whitespacesAndNewlines)
                == "\(bytes.count) \(SigV4Signer.payloadHash(bytes))")
    }

    @Test func aRangedGetReturnsExactlyThoseBytesAndTheTotalSize() async throws {
        let bytes = randomBytes(300_000)
        let key = key("shard.tif")
        try await withBucket { bucket in
            try await bucket.put(key, ByteBuffer(bytes: bytes))
            for range in [0..<1, 1000..<1100, 123_457..<223_457, 299_999..<300_000] {
                let object = try await bucket.get(key, range: range)
                #expect(Array(object.bytes.readableBytesView) == Array(bytes[range]), "\(range)")
                #expect(object.totalSize == bytes.count)
                #expect(object.offset == range.lowerBound)
            }
            // A range running past the end gives what there is.
            let tail = try await bucket.get(key, range: 299_990..<300_100)
            #expect(Array(tail.bytes.readableBytesView) == Array(bytes[299_990...]))
            // A range wholly past the end is S3's InvalidRange.
            let error = await #expect(throws: S3Error.self) { try await bucket.get(key, range: 400_000..<400_010) }
            #expect(error?.status == 416)
            #expect(error?.code == "InvalidRange")
        }
    }

    @Test func aMultipartUploadOfAFileRoundTripsByteExact() async throws {
        // Three parts of SeaweedFS's (and S3's) 5 MiB minimum: two full, one short.
        let partSize = S3Bucket.minimumPartSize
        let bytes = randomBytes(2 * partSize + 12_345)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("dallage-s3-\(UUID().uuidString).bin")
        try Data(bytes).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let key = key("big.tif")
        let etag = try await withBucket { bucket in
            let etag = try await bucket.upload(file: file.path, to: key, partSize: partSize)
            let object = try await bucket.get(key)
            #expect(object.bytes.readableBytes == bytes.count)
            #expect(Array(object.bytes.readableBytesView) == bytes)
            return etag
        }
        // A multipart object's ETag names its part count.
        #expect(etag.hasSuffix("-3\""), "\(etag)")
        let printed = try await server.boto3(
            """
            import hashlib
            head = s3.head_object(Bucket=bucket, Key=sys.argv[1])
            body = s3.get_object(Bucket=bucket, Key=sys.argv[1])["Body"].read()
            print(head["ContentLength"], head["ETag"], hashlib.sha256(body).hexdigest())
            """, arguments: [key])
        #expect(
            printed.trimmingCharacters(in: .whitespacesAndNewlines)
                == "\(bytes.count) \(etag) \(SigV4Signer.payloadHash(bytes))")
    }

    @Test func anAbortedUploadLeavesNoObject() async throws {
        let key = key("aborted.tif")
        try await withBucket { bucket in
            let upload = try await bucket.createMultipartUpload(key)
            _ = try await bucket.uploadPart(upload, number: 1, ByteBuffer(bytes: randomBytes(S3Bucket.minimumPartSize)))
            try await bucket.abortMultipartUpload(upload)
            let error = await #expect(throws: S3Error.self) { try await bucket.head(key) }
            #expect(error?.kind == .notFound)
            // Completing an aborted upload fails; it makes no object either.
            await #expect(throws: S3Error.self) {
                try await bucket.completeMultipartUpload(upload, parts: [S3UploadedPart(number: 1, etag: "\"x\"")])
            }
            await #expect(throws: S3Error.self) { try await bucket.head(key) }
        }
    }

    @Test func aSmallFileIsOnePut() async throws {
        let bytes = randomBytes(1000)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("dallage-s3-\(UUID().uuidString).bin")
        try Data(bytes).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let key = key("small.json")
        try await withBucket { bucket in
            let etag = try await bucket.upload(file: file.path, to: key)
            #expect(!etag.contains("-"), "a single PUT's ETag is the MD5, not a part count: \(etag)")
            #expect(Array(try await bucket.get(key).bytes.readableBytesView) == bytes)
        }
    }

    @Test func listingFollowsContinuationTokens() async throws {
        let prefix = key("list") + "/"
        let keys = (0..<23).map { "\(prefix)\(String(format: "%03d", $0)).json" }
        try await withBucket { bucket in
            for k in keys { try await bucket.put(k, ByteBuffer(string: k)) }
            try await bucket.put(prefix.dropLast() + "-sibling", ByteBuffer(string: "outside the prefix"))
            let first = try await bucket.listPage(prefix: prefix, maxKeys: 5)
            #expect(first.objects.map(\.key) == Array(keys.prefix(5)))
            #expect(first.continuationToken != nil)
            let all = try await bucket.list(prefix: prefix, pageSize: 5)
            #expect(all.map(\.key) == keys)
            #expect(all.allSatisfy { $0.size == $0.key.utf8.count })
            // With a delimiter: the "folders" under a prefix.
            try await bucket.put(prefix + "sub/a", ByteBuffer(string: "a"))
            try await bucket.put(prefix + "sub/b", ByteBuffer(string: "b"))
            let folders = try await bucket.listPage(prefix: prefix, delimiter: "/")
            #expect(folders.commonPrefixes == [prefix + "sub/"])
            #expect(folders.objects.count == keys.count)
        }
    }

    @Test func deleteRemovesTheObject() async throws {
        let key = key("gone.tif")
        try await withBucket { bucket in
            try await bucket.put(key, ByteBuffer(string: "soon gone"))
            try await bucket.delete(key)
            let error = await #expect(throws: S3Error.self) { try await bucket.get(key) }
            #expect(error?.kind == .notFound)
            #expect(error?.code == "NoSuchKey")
            // Deleting what is not there succeeds, as on S3.
            try await bucket.delete(key)
        }
        let printed = try await server.boto3(
            """
            r = s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1])
            print(r.get("KeyCount", 0))
            """, arguments: [key])
        #expect(printed.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    @Test func ifNoneMatchRefusesTheSecondWrite() async throws {
        let key = key("pyramid.json")
        try await withBucket { bucket in
            try await bucket.put(key, ByteBuffer(string: "generation 1"), ifNoneMatch: "*")
            let error = await #expect(throws: S3Error.self) {
                try await bucket.put(key, ByteBuffer(string: "generation 2"), ifNoneMatch: "*")
            }
            #expect(error?.kind == .preconditionFailed)
            #expect(error?.status == 412)
        }
        let printed = try await server.boto3(
            """
            print(s3.get_object(Bucket=bucket, Key=sys.argv[1])["Body"].read().decode())
            """, arguments: [key])
        #expect(printed.trimmingCharacters(in: .whitespacesAndNewlines) == "generation 1")
    }

    @Test func aWrongSecretIsACredentialsError() async throws {
        var configuration = try server.configuration
        configuration.credentials.secretAccessKey = "not-the-secret"
        let error = try await withBucket(configuration) { bucket in
            await #expect(throws: S3Error.self) { try await bucket.get("anything") }
        }
        #expect(error?.kind == .invalidCredentials)
        #expect(error?.code == "SignatureDoesNotMatch")
        let text = error.map { "\($0)" } ?? ""
        #expect(!text.contains("\n"))
        #expect(!text.contains("not-the-secret"))
        #expect(text.hasPrefix("S3 GET s3://\(SeaweedFS.bucketName)/anything: SignatureDoesNotMatch (403): "))
    }

    @Test func anUnknownKeyIsACredentialsError() async throws {
        var configuration = try server.configuration
        configuration.credentials.accessKeyID = "nobody"
        let error = try await withBucket(configuration) { bucket in
            await #expect(throws: S3Error.self) { try await bucket.head("anything") }
        }
        // A HEAD answer has no body: the status tells what it can.
        #expect(error?.kind == .accessDenied || error?.kind == .invalidCredentials)
        #expect(error?.status == 403)
        let listed = try await withBucket(configuration) { bucket in
            await #expect(throws: S3Error.self) { try await bucket.listPage() }
        }
        #expect(listed?.kind == .invalidCredentials)
        #expect(listed?.code == "InvalidAccessKeyId")
    }

    @Test func aMissingBucketIsNoSuchBucket() async throws {
        let error = try await withBucket(bucket: "no-such-bucket-here") { bucket in
            await #expect(throws: S3Error.self) { try await bucket.get("pyramid.json") }
        }
        #expect(error?.kind == .noSuchBucket)
        #expect(
            error?.description.hasPrefix("S3 GET s3://no-such-bucket-here/pyramid.json: NoSuchBucket (404)") == true)
    }

    @Test func anEndpointBehindAnInternalCAIsReachedWithAWSCABundle() async throws {
        // Configured as a user would: from the AWS environment.
        let configuration = try S3Configuration(
            environment: server.environment.merging(
                ["AWS_ENDPOINT_URL": "https://127.0.0.1:\(server.httpsPort)", "AWS_CA_BUNDLE": server.caBundle],
                uniquingKeysWith: { $1 }))
        #expect(configuration.pathStyle)
        let key = key("tls.json")
        try await withBucket(configuration) { bucket in
            try await bucket.put(key, ByteBuffer(string: "over TLS"))
            #expect(String(buffer: try await bucket.get(key).bytes) == "over TLS")
        }
        // Without the bundle, the system's CAs do not know the certificate.
        var untrusted = configuration
        untrusted.caBundlePath = nil
        let error = try await withBucket(untrusted) { bucket in
            await #expect(throws: S3Error.self) { try await bucket.get(key) }
        }
        #expect(error?.kind == .unreachable)
        #expect(
            error?.description
                == "S3 GET s3://\(SeaweedFS.bucketName)/\(key): TLS with https://127.0.0.1:\(try server.httpsPort) failed:"
                + " the endpoint's certificate is not trusted (CERTIFICATE_VERIFY_FAILED): set AWS_CA_BUNDLE to its CA")
    }

}

/// A closed port answers nothing: the client gives up (no hang: the test ends) with an error that
/// says what could not be reached and the connect timeout it allowed. (No wall-clock bound here:
/// under the whole suite's load the cooperative threads are late by tens of seconds.)
@Test func anUnreachableEndpointFailsFastAndClearly() async throws {
    let port = try freePorts(1)[0]
    var configuration = S3Configuration(
        credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b"),
        endpoint: S3Endpoint(secure: false, host: "127.0.0.1", port: port))
    configuration.connectTimeout = .seconds(1)
    let error = try await S3Client.withClient(configuration: configuration) { client in
        await #expect(throws: S3Error.self) { try await client.bucket("bars").get("pyramid.json") }
    }
    #expect(error?.kind == .unreachable)
    #expect(
        error?.description
            == "S3 GET s3://bars/pyramid.json: cannot connect to http://127.0.0.1:\(port) within 1 s: Connection refused"
    )
}

import Coverage
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Pyramid
import S3
import Serving
import TestSupport
import Testing

@testable import Server

/// Extracts with an `s3://` store and `extracts_dir` (issue 15): queued results land in the bucket
/// and any server on the database serves them; `/api/extracts/dalles` zips dalles from a bucket.
@Suite(.seaweedFS, .serialized)
struct S3ExtractTests {
    let folder = ServerFixture.shared + "/store"

    static var quiet: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    /// Runs `body` with a client of the test server's endpoint, shut down after.
    static func withClient<R>(_ body: (S3Client) async throws -> R) async throws -> R {
        let server = try #require(SeaweedFS.current)
        return try await S3Client.withClient(configuration: server.configuration, logger: quiet) { try await body($0) }
    }

    static func state(_ client: some TestClientProtocol, _ id: String) async throws -> String {
        try await client.execute(uri: "/api/extracts/\(id)", method: .get) { r in
            (try JSONSerialization.jsonObject(with: Data(buffer: r.body)) as? [String: Any])?["state"] as? String ?? ""
        }
    }

    /// Queues the triangle at 10 cm (always queued: `direct_pixels` is 1), waits for it and
    /// downloads it: the job's id and the bytes.
    static func queueAndDownload(_ client: some TestClientProtocol) async throws -> (String, [UInt8]) {
        let body = #"{"tileset":"pcrs","geometry":\#(RenderAndExtractTests.triangle),"resolution":0.1}"#
        let id = try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
            #expect(r.status == .accepted, "\(String(buffer: r.body))")
            return (try JSONSerialization.jsonObject(with: Data(buffer: r.body)) as? [String: Any])?["id"] as? String
                ?? ""
        }
        try await eventually("extract \(id) to be done") { try await state(client, id) == "done" }
        let bytes = try await client.execute(uri: "/api/extracts/\(id)/download", method: .get) { r in
            #expect(r.status == .ok)
            #expect(r.headers[.contentLength] == String(r.body.readableBytes))
            return Array(r.body.readableBytesView)
        }
        return (id, bytes)
    }

    @Test func queuedResultsGoToTheBucketAndAnyServerServesThem() async throws {
        let server = try #require(SeaweedFS.current)
        let storePrefix = try await S3ServingTests.uploaded()
        let resultsPrefix = "extracts/\(UUID().uuidString)"
        let database = NSTemporaryDirectory() + "s3-jobs-\(UUID().uuidString).sqlite"
        let staging = NSTemporaryDirectory() + "s3-staging-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        let configure: (inout ServerConfiguration) -> Void = {
            $0.database = database
            $0.extractsDirectory = "s3://\(SeaweedFS.bucketName)/\(resultsPrefix)"
            $0.extractLimits.directPixels = 1
        }
        // The same job with a folder store and a folder of results: the reference.
        let (_, fromFolder) = try await ServerFixture.app(store: folder) { $0.extractLimits.directPixels = 1 }
            .test(.live) { try await Self.queueAndDownload($0) }
        #expect(fromFolder.count > 1000)

        func app(_ client: S3Client) throws -> some ApplicationProtocol {
            let bucket = client.bucket(SeaweedFS.bucketName)
            return try ServerFixture.app(
                store: "s3://\(SeaweedFS.bucketName)/\(storePrefix)",
                reading: S3Store(bucket: bucket, prefix: storePrefix, logger: Self.quiet),
                extractResults: BucketExtractResults(bucket: bucket, prefix: resultsPrefix, staging: staging),
                configure: configure)
        }
        let (id, fromBucket) = try await Self.withClient {
            try await app($0).test(.live) { try await Self.queueAndDownload($0) }
        }
        #expect(
            fromBucket == fromFolder, "\(fromBucket.count) bytes from the bucket, \(fromFolder.count) from the folder")
        // What landed: the result under its name, nothing else (no part, no temporary name), and
        // nothing left in the staging folder.
        let listed = try await server.boto3(
            """
            r = s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1] + "/")
            for o in r.get("Contents", []): print(o["Key"], o["Size"])
            """, arguments: [resultsPrefix])
        #expect(listed.split(separator: "\n") == ["\(resultsPrefix)/\(id).tif \(fromFolder.count)"], "\(listed)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: staging)) ?? []).isEmpty)
        let downloaded = NSTemporaryDirectory() + "s3-result-\(UUID().uuidString).tif"
        defer { try? FileManager.default.removeItem(atPath: downloaded) }
        try Data(fromBucket).write(to: URL(fileURLWithPath: downloaded))
        let same = try await server.boto3(
            """
            body = s3.get_object(Bucket=bucket, Key=sys.argv[1])["Body"].read()
            print("same" if body == open(sys.argv[2], "rb").read() else "different")
            """, arguments: ["\(resultsPrefix)/\(id).tif", downloaded])
        #expect(same.trimmingCharacters(in: .whitespacesAndNewlines) == "same")

        // A fresh server on the same database and bucket (its own client, no job runner) serves
        // the download too, and HEAD says its length without a body.
        try await Self.withClient { client in
            try await app(client).test(.router) { other in
                try await other.execute(uri: "/api/extracts/\(id)/download", method: .get) { r in
                    #expect(r.status == .ok)
                    #expect(Array(r.body.readableBytesView) == fromBucket)
                    #expect(r.headers[.contentType] == "image/tiff")
                }
                try await other.execute(uri: "/api/extracts/\(id)/download", method: .head) { r in
                    #expect(r.status == .ok && r.body.readableBytes == 0)
                    #expect(r.headers[.contentLength] == String(fromBucket.count))
                }
            }
        }

        // `dallage serve` as a replica is started (s3:// store and extracts_dir from the environment,
        // the same database): it serves the download too.
        let port = try freePorts(1)[0]
        let log = NSTemporaryDirectory() + "s3-replica-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let replica = try ChildProcess(
            ServerFixture.root + "/.build/debug/dallage",
            [
                "serve", "--store", "s3://\(SeaweedFS.bucketName)/\(storePrefix)", "--port", "\(port)", "--tms-dir",
                ServerFixture.root + "/config/tms",
            ],
            environment: server.environment.merging([
                "DALLAGE_DB": database, "DALLAGE_EXTRACTS_DIR": "s3://\(SeaweedFS.bucketName)/\(resultsPrefix)",
                "AWS_CA_BUNDLE": "",
            ]) { $1 }, log: log)
        defer { replica.kill() }
        let base = "http://127.0.0.1:\(port)"
        let fetched = NSTemporaryDirectory() + "s3-replica-\(UUID().uuidString).tif"
        defer { try? FileManager.default.removeItem(atPath: fetched) }
        try await eventually("the replica to answer /healthz", timeout: .seconds(60), every: .milliseconds(100)) {
            (try? await run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", base + "/healthz"])) == "200"
        }
        let code = try await run(
            "curl", ["-s", "-o", fetched, "-w", "%{http_code}", base + "/api/extracts/\(id)/download"])
        #expect(code == "200", "\((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        #expect(try Data(contentsOf: URL(fileURLWithPath: fetched)) == Data(fromBucket))
        replica.kill()

        // Expired (as if its time had passed): the next server pass deletes the object.
        // A result a killed server never uploaded, two hours old, is deleted with the expired
        // job's object; a folder there (another prefix's staging folder) is left alone.
        let old: [FileAttributeKey: Any] = [.modificationDate: Date().addingTimeInterval(-7200)]
        let left = staging + "/0123456789abcdef0123456789abcdef.tif"
        try FileManager.default.createDirectory(atPath: staging + "/below", withIntermediateDirectories: true)
        try Data("half".utf8).write(to: URL(fileURLWithPath: left))
        try FileManager.default.setAttributes(old, ofItemAtPath: left)
        try FileManager.default.setAttributes(old, ofItemAtPath: staging + "/below")
        let jobs = try SQLiteCoverageStore(path: database)
        var job = try #require(try await jobs.job(id: id))
        job.expiresAt = "2000-01-01T00:00:00Z"
        try await jobs.updateJob(job)
        try await Self.withClient { client in
            try await app(client).test(.live) { other in
                try await eventually("the job to expire") { try await Self.state(other, id) == "expired" }
                try await other.execute(uri: "/api/extracts/\(id)/download", method: .get) {
                    #expect($0.status == .conflict)
                }
            }
        }
        #expect(!FileManager.default.fileExists(atPath: left))
        #expect(FileManager.default.fileExists(atPath: staging + "/below"))
        let after = try await server.boto3(
            "print(s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1] + '/').get('KeyCount', 0))",
            arguments: [resultsPrefix])
        #expect(after.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    /// The fixture's dalles uploaded to the bucket and its source index rewritten to name them as
    /// the tiler does (`/vsis3/bucket/key`): zipped from there, byte for byte.
    @Test func dallesInABucketAreZippedByteForByte() async throws {
        let server = try #require(SeaweedFS.current)
        let storePrefix = try await S3ServingTests.uploaded()
        let dallesPrefix = "dalles/\(UUID().uuidString)"
        let keys = try await server.upload(folder: ServerFixture.shared + "/src", prefix: dallesPrefix)
        #expect(keys.count == 4)
        let index = try String(contentsOfFile: folder + "/pcrs/sources.json", encoding: .utf8)
            .replacingOccurrences(
                of: ServerFixture.shared.replacingOccurrences(of: "/", with: "\\/") + "\\/src",
                with: "\\/vsis3\\/\(SeaweedFS.bucketName)\\/\(dallesPrefix)"
            )
            .replacingOccurrences(
                of: ServerFixture.shared + "/src", with: "/vsis3/\(SeaweedFS.bucketName)/\(dallesPrefix)")
        #expect(index.contains("/vsis3/") && !index.contains(ServerFixture.shared))
        let geometry =
            RenderAndExtractTests.triangle.replacingOccurrences(of: "\n", with: "")
            .addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        try await Self.withClient { client in
            let bucket = client.bucket(SeaweedFS.bucketName)
            try await bucket.put("\(storePrefix)/pcrs/sources.json", ByteBuffer(string: index))
            let app = try ServerFixture.app(
                store: "s3://\(SeaweedFS.bucketName)/\(storePrefix)",
                reading: S3Store(bucket: bucket, prefix: storePrefix, logger: Self.quiet), objects: client)
            try await app.test(.router) { http in
                let names = try await http.execute(
                    uri: "/api/extracts/dalles?tileset=pcrs&geometry=\(geometry)", method: .get
                ) { r in
                    #expect(r.status == .ok, "\(String(buffer: r.body))")
                    let o = try JSONSerialization.jsonObject(with: Data(buffer: r.body)) as? [String: Any]
                    return (o?["dalles"] as? [[String: Any]] ?? []).compactMap { $0["nom"] as? String }
                }
                #expect(names.count >= 2, "\(names)")
                let zip = NSTemporaryDirectory() + "dalles-\(UUID().uuidString).zip"
                defer { try? FileManager.default.removeItem(atPath: zip) }
                try await http.execute(
                    uri: "/api/extracts/dalles?tileset=pcrs&geometry=\(geometry)&zip=true", method: .get
                ) { r in
                    #expect(r.status == .ok, "\(String(buffer: r.body))")
                    #expect(r.headers[.contentType] == "application/zip")
                    try Data(buffer: r.body).write(to: URL(fileURLWithPath: zip))
                }
                // Every entry, read by Python's zipfile (CRCs checked), equals its object as boto3 reads it.
                let compared = try await server.boto3(
                    """
                    import zipfile
                    with zipfile.ZipFile(sys.argv[1]) as z:
                        assert z.testzip() is None
                        for n in z.namelist():
                            same = z.read(n) == s3.get_object(Bucket=bucket, Key=sys.argv[2] + "/" + n)["Body"].read()
                            print(n, "same" if same else "different")
                    """, arguments: [zip, dallesPrefix])
                #expect(compared.split(separator: "\n").map(String.init) == names.map { "\($0) same" }, "\(compared)")

                // A dalle gone from the bucket: the same refusal as a missing local file, before any byte.
                try await bucket.delete("\(dallesPrefix)/\(names[0])")
                try await http.execute(
                    uri: "/api/extracts/dalles?tileset=pcrs&geometry=\(geometry)&zip=true", method: .get
                ) { r in
                    #expect(r.status == .serviceUnavailable)
                    let body = String(buffer: r.body)
                    #expect(body.contains("the dalle \(names[0]) cannot be read on the server now"), "\(body)")
                    #expect(!body.contains("vsis3") && !body.contains(SeaweedFS.bucketName), "\(body)")
                }
            }
        }
    }

    /// `dallage serve` with an `extracts_dir` in a bucket it cannot use: one line saying why, a
    /// failure status, no secret.
    @Test func serveRefusesAnExtractsBucketItCannotUse() async throws {
        let server = try #require(SeaweedFS.current)
        let binary = ServerFixture.root + "/.build/debug/dallage"
        try #require(FileManager.default.isExecutableFile(atPath: binary))
        let base = server.environment.merging([
            "DALLAGE_DB": NSTemporaryDirectory() + "dallage-s3x-\(UUID().uuidString).sqlite"
        ]) { $1 }
        let cases: [(String, [String: String], String)] = [
            ("s3://no-such-bucket-here/results", [:], "NoSuchBucket"),
            (
                "s3://\(SeaweedFS.bucketName)/results", ["AWS_SECRET_ACCESS_KEY": "not-the-secret"],
                "SignatureDoesNotMatch"
            ),
            ("s3://\(SeaweedFS.bucketName)/results", ["AWS_ACCESS_KEY_ID": ""], "no credentials"),
            ("gs://elsewhere/results", [:], "not a store scheme"),
        ]
        for (extracts, changes, reason) in cases {
            let environment = base.merging(changes) { $1 }.merging(["DALLAGE_EXTRACTS_DIR": extracts]) { $1 }
                .filter { !$0.value.isEmpty }
            let (status, output) = try await S3ServingTests.serve(
                binary, ["serve", "--store", folder, "--port", String(try freePorts(1)[0])], environment: environment)
            #expect(status != 0, "\(reason): \(output)")
            #expect(
                output.split(separator: "\n").count == 1 && output.hasPrefix("Error: extracts_dir '\(extracts)'"),
                "\(reason): \(output)")
            #expect(output.contains(reason), "\(reason): \(output)")
            #expect(!output.contains("not-the-secret") && !output.contains(SeaweedFS.secretKey), "\(output)")
        }
    }
}

/// Which source dalle paths name an object: the tiler's `/vsis3/bucket/key`, a user's `s3://bucket/key`.
struct DalleObjectNameTests {
    @Test(
        arguments: [
            ("/vsis3/ortho/2024/a.tif", "ortho", "2024/a.tif"), ("s3://ortho/a b/ሴ.jp2", "ortho", "a b/ሴ.jp2"),
            ("/vsis3/ortho/", nil, nil), ("/vsis3/ortho", nil, nil), ("/vsis3//a.tif", nil, nil), ("s3://", nil, nil),
            ("/data/src/a.tif", nil, nil), ("vsis3/ortho/a.tif", nil, nil), ("/vsis3x/ortho/a.tif", nil, nil),
        ] as [(String, String?, String?)])
    func objectNames(_ path: String, _ bucket: String?, _ key: String?) {
        let found = ExtractsController.objectName(path)
        #expect(found?.bucket == bucket && found?.key == key, "\(path)")
    }
}

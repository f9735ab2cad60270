import Foundation
import Testing

@testable import S3

private let keys = ["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"]

@Test func awsByDefault() throws {
    let c = try S3Configuration(environment: keys)
    #expect(c.region == "us-east-1")
    #expect(c.endpoint == S3Endpoint(secure: true, host: "s3.us-east-1.amazonaws.com"))
    #expect(!c.pathStyle)
    #expect(c.credentials.sessionToken == nil)
}

@Test func anEndpointMeansPathStyle() throws {
    let c = try S3Configuration(
        environment: keys.merging(
            [
                "AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_REGION": "eu-west-3",
                "AWS_SESSION_TOKEN": "tok",
            ], uniquingKeysWith: { $1 }))
    #expect(c.region == "eu-west-3")
    #expect(c.endpoint == S3Endpoint(secure: false, host: "127.0.0.1", port: 8333))
    #expect(c.endpoint.authority == "127.0.0.1:8333")
    #expect(c.pathStyle)
    #expect(c.credentials.sessionToken == "tok")
}

@Test func theS3EndpointVariableWinsOverTheGeneralOne() throws {
    let c = try S3Configuration(
        environment: keys.merging(
            ["AWS_ENDPOINT_URL": "http://other:9000", "AWS_ENDPOINT_URL_S3": "https://ceph.internal:7480"],
            uniquingKeysWith: { $1 }))
    #expect(c.endpoint == S3Endpoint(secure: true, host: "ceph.internal", port: 7480))
    #expect(
        throws: S3ConfigurationError(
            "AWS_ENDPOINT_URL_S3 'ceph:7480' is not an http:// or https:// URL of a host (and port)")
    ) {
        try S3Configuration(environment: keys.merging(["AWS_ENDPOINT_URL_S3": "ceph:7480"], uniquingKeysWith: { $1 }))
    }
}

@Test(
    "Endpoints: scheme, host, port and nothing else",
    arguments: [
        ("https://minio.example.org", "https://minio.example.org"),
        ("https://minio.example.org:443/", "https://minio.example.org"),
        ("http://ceph:7480", "http://ceph:7480"),
        ("HTTP://ceph:80", "http://ceph"),
    ])
func endpoints(_ text: String, _ described: String) throws {
    #expect(try S3Endpoint(parsing: text).description == described)
}

@Test(arguments: ["ceph:7480", "ftp://ceph", "https://", "https://ceph/bucket", "https://ceph?x=1", "s3://bucket"])
func endpointsRefused(_ text: String) {
    #expect(throws: S3ConfigurationError.self) { try S3Endpoint(parsing: text) }
}

@Test func missingCredentialsAreNamed() {
    #expect(throws: S3ConfigurationError("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")) {
        try S3Configuration(environment: [:])
    }
    #expect(throws: S3ConfigurationError("no credentials: set AWS_SECRET_ACCESS_KEY")) {
        try S3Configuration(environment: ["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": " "])
    }
}

@Test func aMissingCABundleIsRefusedAtOnce() {
    #expect(throws: S3ConfigurationError("AWS_CA_BUNDLE '/nonexistent/ca.pem' is not a readable file")) {
        try S3Configuration(
            environment: keys.merging(["AWS_CA_BUNDLE": "/nonexistent/ca.pem"], uniquingKeysWith: { $1 }))
    }
}

@Test func aCABundleThatIsNotPEMIsRefusedByTheClient() throws {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("dallage-ca-\(UUID().uuidString).pem")
    try Data("not a certificate".utf8).write(to: path)
    defer { try? FileManager.default.removeItem(at: path) }
    let configuration = S3Configuration(
        credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b"), caBundlePath: path.path)
    #expect(throws: S3ConfigurationError.self) { try S3Client(configuration: configuration) }
}

@Test(
    "Error kinds from S3's codes and statuses",
    arguments: [
        (404, "NoSuchKey" as String?, S3Error.Kind.notFound), (404, "NoSuchBucket", .noSuchBucket),
        (404, nil, .notFound),
        (403, "AccessDenied", .accessDenied), (403, "InvalidAccessKeyId", .invalidCredentials),
        (403, "SignatureDoesNotMatch", .invalidCredentials), (400, "ExpiredToken", .invalidCredentials),
        (403, nil, .accessDenied), (412, "PreconditionFailed", .preconditionFailed), (412, nil, .preconditionFailed),
        (503, "SlowDown", .unavailable), (500, "InternalError", .unavailable), (502, nil, .unavailable),
        (416, "InvalidRange", .other), (400, "EntityTooSmall", .other),
    ])
func errorKinds(_ status: Int, _ code: String?, _ kind: S3Error.Kind) {
    #expect(S3Error.kind(status: status, code: code) == kind)
}

@Test func anErrorIsOneLine() {
    let e = S3Error(
        kind: .noSuchBucket, operation: "GET", resource: "s3://nob/x", status: 404, code: "NoSuchBucket",
        message: "The specified bucket\ndoes not exist")
    #expect(e.description == "S3 GET s3://nob/x: NoSuchBucket (404): The specified bucket does not exist")
}

@Test(
    arguments: [
        ("bytes 0-9/1234", 0, 1234 as Int?), ("bytes 100-199/*", 100, nil), (" bytes 5-5/6", 5, 6),
    ])
func contentRange(_ value: String, _ start: Int, _ total: Int?) throws {
    let parsed = try #require(S3Bucket.parseContentRange(value))
    #expect(parsed.start == start)
    #expect(parsed.total == total)
}

@Test func contentRangeRefused() {
    for value in ["", "bytes", "items 0-9/10", "bytes x-9/10", "bytes */10"] {
        #expect(S3Bucket.parseContentRange(value) == nil, "\(value)")
    }
}

@Test func errorDocumentParses() throws {
    let xml = """
        <?xml version="1.0" encoding="UTF-8"?>
        <Error><Code>NoSuchKey</Code><Message>The resource &amp; you asked for</Message><RequestId>42</RequestId></Error>
        """
    let tree = try #require(XMLTree.parse(Array(xml.utf8)))
    #expect(tree.name == "Error")
    #expect(tree.text("Code") == "NoSuchKey")
    #expect(tree.text("Message") == "The resource & you asked for")
    #expect(XMLTree.parse(Array("<Error><Code>".utf8)) == nil)
}

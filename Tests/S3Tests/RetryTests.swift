import NIOCore
import Testing

@testable import S3

/// A client of a scripted server, with short backoffs and timeouts.
func withScriptedClient<R>(
    _ script: [ScriptedServer.Answer], maxAttempts: Int = 4, sessionToken: String? = nil,
    _ body: (S3Bucket, ScriptedServer) async throws -> R
) async throws -> R {
    let server = try await ScriptedServer(script)
    var configuration = S3Configuration(
        credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b", sessionToken: sessionToken),
        endpoint: S3Endpoint(secure: false, host: "127.0.0.1", port: server.port))
    configuration.maxAttempts = maxAttempts
    configuration.baseBackoff = .milliseconds(1)
    configuration.maxBackoff = .milliseconds(20)
    configuration.readTimeout = .milliseconds(300)
    do {
        let result = try await S3Client.withClient(configuration: configuration) { client in
            try await body(client.bucket("bars"), server)
        }
        try await server.close()
        return result
    } catch {
        try? await server.close()
        throw error
    }
}

@Test func slowDownIsRetriedUntilItPasses() async throws {
    try await withScriptedClient([
        .status(503, code: "SlowDown"), .status(503, code: "SlowDown"), .status(200, body: "ok"),
    ]) {
        bucket, server in
        let object = try await bucket.get("pyramid.json")
        #expect(String(buffer: object.bytes) == "ok")
        #expect(server.requests.count == 3)
    }
}

@Test func serverErrorsAreRetriedABoundedNumberOfTimes() async throws {
    try await withScriptedClient([.status(500, code: "InternalError")], maxAttempts: 3) { bucket, server in
        let error = await #expect(throws: S3Error.self) { try await bucket.get("pyramid.json") }
        #expect(error?.kind == .unavailable)
        #expect(error?.code == "InternalError")
        #expect(server.requests.count == 3)
    }
}

@Test func aConditionalPutIsNotRepeatedAfterA500ButIsAfterSlowDown() async throws {
    // After a 500 its first attempt may have landed: a retry would then fail on its own write.
    try await withScriptedClient([.status(500, code: "InternalError"), .status(200)]) { bucket, server in
        await #expect(throws: S3Error.self) {
            try await bucket.put("pyramid.json", ByteBuffer(string: "g2"), ifNoneMatch: "*")
        }
        #expect(server.requests.count == 1)
    }
    // SlowDown means the store did not act on it.
    try await withScriptedClient([.status(503, code: "SlowDown"), .status(200)]) { bucket, server in
        try await bucket.put("pyramid.json", ByteBuffer(string: "g2"), ifNoneMatch: "*")
        #expect(server.requests.count == 2)
        #expect(server.requests.allSatisfy { $0.headers["if-none-match"] == ["*"] })
    }
}

@Test func aLostConnectionIsRetriedForAGetButNotForAConditionalPut() async throws {
    try await withScriptedClient([.hangUp, .status(200, body: "ok")]) { bucket, server in
        let object = try await bucket.get("pyramid.json")
        #expect(String(buffer: object.bytes) == "ok")
        #expect(server.requests.count == 2)
    }
    try await withScriptedClient([.hangUp, .status(200)]) { bucket, server in
        let error = await #expect(throws: S3Error.self) {
            try await bucket.put("pyramid.json", ByteBuffer(string: "g2"), ifNoneMatch: "*")
        }
        #expect(error?.kind == .unavailable)
        #expect(server.requests.count == 1)
    }
}

@Test func aRefusalIsNotRetried() async throws {
    try await withScriptedClient([.status(404, code: "NoSuchKey"), .status(200)]) { bucket, server in
        let error = await #expect(throws: S3Error.self) { try await bucket.get("nothing") }
        #expect(error?.kind == .notFound)
        #expect(server.requests.count == 1)
    }
}

/// A server that never answers: each attempt ends on the read timeout (no hang: the test ends),
/// the attempts are bounded, and the error says it timed out.
@Test func aSilentServerTimesOutAfterBoundedAttempts() async throws {
    try await withScriptedClient([.silence], maxAttempts: 2) { bucket, server in
        let error = await #expect(throws: S3Error.self) { try await bucket.get("pyramid.json", range: 0..<10) }
        #expect(error?.kind == .timeout)
        #expect(server.requests.count == 2)
    }
}

@Test func requestsCarryTheSignatureAndEncodedKey() async throws {
    try await withScriptedClient([.status(200, body: "x")]) { bucket, server in
        _ = try await bucket.get("dalles/0704 6618+été.tif", range: 5..<10)
        let head = try #require(server.requests.first)
        #expect(head.uri == "/bars/dalles/0704%206618%2B%C3%A9t%C3%A9.tif")
        #expect(head.headers["range"] == ["bytes=5-9"])
        #expect(head.headers["host"] == ["127.0.0.1:\(server.port)"])
        #expect(head.headers["authorization"].first?.hasPrefix("AWS4-HMAC-SHA256 Credential=a/") == true)
        #expect(head.headers["x-amz-content-sha256"] == [SigV4Signer.emptyPayloadHash])
    }
}

@Test func aSessionTokenIsSentAndSigned() async throws {
    try await withScriptedClient([.status(200, body: "x")], sessionToken: "FQoGZXIvYXdzEXAMPLE") { bucket, server in
        _ = try await bucket.get("pyramid.json")
        let head = try #require(server.requests.first)
        #expect(head.headers["x-amz-security-token"] == ["FQoGZXIvYXdzEXAMPLE"])
        #expect(head.headers["authorization"].first?.contains("x-amz-date;x-amz-security-token,") == true)
    }
}

@Test(
    "AWS addressing: the bucket in the host name, but for a bucket with dots (certificates); path-style elsewhere",
    arguments: [
        (nil as S3Endpoint?, "bars", "/shards/a.tif", "bars.s3.eu-west-3.amazonaws.com"),
        (nil, "bars.ign.fr", "/bars.ign.fr/shards/a.tif", "s3.eu-west-3.amazonaws.com"),
        (
            S3Endpoint(secure: true, host: "ceph.internal", port: 7480), "bars", "/bars/shards/a.tif",
            "ceph.internal:7480"
        ),
    ])
func addressing(_ endpoint: S3Endpoint?, _ bucket: String, _ path: String, _ host: String) throws {
    let configuration = S3Configuration(
        credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b"), region: "eu-west-3", endpoint: endpoint)
    let client = try S3Client(configuration: configuration)
    defer { Task { try? await client.shutdown() } }
    let target = client.target(
        S3Client.Call(operation: "GET", method: .GET, bucket: bucket, key: "shards/a.tif", idempotent: true))
    #expect(target.path == path)
    #expect(target.host == host)
}

@Test func backoffsStayUnderTheirCeiling() throws {
    var configuration = S3Configuration(credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b"))
    configuration.baseBackoff = .milliseconds(100)
    configuration.maxBackoff = .seconds(1)
    let client = try S3Client(configuration: configuration)
    defer { Task { try? await client.shutdown() } }
    for attempt in 1...12 {
        let ceiling = min(Duration.seconds(1), .milliseconds(100) * (1 << (attempt - 1)))
        for _ in 0..<50 {
            let delay = client.backoff(attempt: attempt)
            #expect(delay >= .zero && delay <= ceiling, "attempt \(attempt): \(delay)")
        }
    }
}

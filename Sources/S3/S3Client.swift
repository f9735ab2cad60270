import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A client of one S3-compatible endpoint: owns one `HTTPClient` and its connection pool, signs
/// every request (SigV4), bounds each attempt in time, retries what may be retried with
/// exponential backoff and jitter, and turns every failure into an `S3Error`.
///
/// Shut it down with `shutdown()` once done (or use `withClient`): its connections and their
/// event-loop resources are released there, not at `deinit`.
public final class S3Client: Sendable {
    /// How the endpoint is reached.
    public let configuration: S3Configuration
    let http: HTTPClient
    let signer: SigV4Signer
    let logger: Logger

    /// A client for `configuration`; throws when the CA bundle cannot be read.
    public init(configuration: S3Configuration, logger: Logger = Logger(label: "dallage.s3"))
        throws(S3ConfigurationError)
    {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let path = configuration.caBundlePath {
            do {
                let certificates = try NIOSSLCertificate.fromPEMFile(path)
                guard !certificates.isEmpty else { throw S3ConfigurationError("no certificate in it") }
                tls.trustRoots = .certificates(certificates)
            } catch {
                throw S3ConfigurationError("AWS_CA_BUNDLE '\(path)' is not a PEM file of certificates (\(error))")
            }
        }
        var pool = HTTPClient.Configuration.ConnectionPool(
            idleTimeout: .seconds(60),
            concurrentHTTP1ConnectionsPerHostSoftLimit: max(1, configuration.maxConnections))
        pool.retryConnectionEstablishment = true
        var http = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(
                connect: TimeAmount(configuration.connectTimeout), read: TimeAmount(configuration.readTimeout)),
            connectionPool: pool, decompression: .disabled)
        http.httpVersion = .http1Only
        self.configuration = configuration
        self.http = HTTPClient(
            eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: http, backgroundActivityLogger: logger)
        self.signer = SigV4Signer(credentials: configuration.credentials, region: configuration.region, service: "s3")
        self.logger = logger
    }

    /// Closes every connection. The client answers no request after.
    public func shutdown() async throws {
        try await http.shutdown()
    }

    /// Runs `body` with a client and shuts the client down after, whether `body` threw or not.
    public static func withClient<R>(
        configuration: S3Configuration, logger: Logger = Logger(label: "dallage.s3"),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (S3Client) async throws -> R
    ) async throws -> R {
        let client = try S3Client(configuration: configuration, logger: logger)
        let result: R
        do {
            result = try await body(client)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
        return result
    }

    /// The bucket of that name on this endpoint.
    public func bucket(_ name: String) -> S3Bucket { S3Bucket(client: self, name: name) }

    // MARK: - One request, signed, timed, retried

    /// One S3 call, as the client sends it.
    struct Call {
        /// The operation's name in errors and logs (`GET`, `ListObjectsV2`).
        var operation: String
        var method: HTTPMethod
        var bucket: String
        /// nil for a request on the bucket itself.
        var key: String?
        var query: [(name: String, value: String)] = []
        var headers: [(name: String, value: String)] = []
        var body: ByteBuffer?
        /// Whether sending it twice does what sending it once does: only then is it repeated after
        /// a failure that may have reached the store.
        var idempotent: Bool
        /// The most body bytes kept from the answer.
        var maxResponseBytes: Int = 1 << 20

        var resource: String { key.map { "s3://\(bucket)/\($0)" } ?? "s3://\(bucket)" }
    }

    /// An answer with a 2xx status.
    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    /// Sends `call` until it succeeds, fails in a way a retry cannot mend, or `maxAttempts` is
    /// reached; 503/SlowDown is retried for any request (the store did not act on it), other 5xx
    /// and lost connections only for idempotent ones.
    func send(_ call: Call) async throws(S3Error) -> Answer {
        var attempt = 1
        while true {
            let failure: S3Error
            do {
                return try await sendOnce(call)
            } catch {
                failure = error
            }
            let throttled = failure.status == 503 || failure.code == "SlowDown"
            let retryable =
                throttled
                || (call.idempotent && [.unavailable, .timeout].contains(failure.kind))
            guard retryable, attempt < configuration.maxAttempts else { throw failure }
            let delay = backoff(attempt: attempt)
            logger.warning(
                "\(failure); attempt \(attempt) of \(configuration.maxAttempts), next in \(S3Client.describe(delay))"
            )
            do { try await Task.sleep(for: delay) } catch {
                throw S3Error(
                    kind: .other, operation: call.operation, resource: call.resource, message: "cancelled")
            }
            attempt += 1
        }
    }

    /// Full jitter: a random wait between 0 and min(max, base × 2^(attempt-1)).
    func backoff(attempt: Int) -> Duration {
        let ceiling = min(configuration.maxBackoff, configuration.baseBackoff * (1 << min(attempt - 1, 20)))
        let ceilingNanos = max(
            1, ceiling.components.seconds * 1_000_000_000 + ceiling.components.attoseconds / 1_000_000_000)
        return .nanoseconds(Int64.random(in: 0...ceilingNanos))
    }

    /// A system error as the system words it (`Connection refused`), anything else as it describes itself.
    static func reason(_ error: any Error) -> String {
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)) }
        return "\(error)"
    }

    /// BoringSSL's reason (`CERTIFICATE_VERIFY_FAILED`) rather than its whole error stack, with
    /// what to do when the certificate is not trusted.
    static func tlsReason(_ error: NIOSSLError) -> String {
        let text = "\(error)"
        guard let marker = text.range(of: "OPENSSL_internal:") else { return text }
        let reason = text[marker.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
        guard !reason.isEmpty else { return text }
        if reason == "CERTIFICATE_VERIFY_FAILED" {
            return "the endpoint's certificate is not trusted (CERTIFICATE_VERIFY_FAILED): set AWS_CA_BUNDLE to its CA"
        }
        return String(reason)
    }

    /// `5 s`, `150 ms`: a duration for a person.
    static func describe(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }

    /// The URL path, host header and URL of a call: path-style (`/bucket/key`) for a non-AWS endpoint
    /// or a bucket with dots (their virtual host names do not match AWS's certificates).
    func target(_ call: Call) -> (path: String, host: String) {
        let endpoint = configuration.endpoint
        if configuration.pathStyle || call.bucket.contains(".") {
            return ("/\(call.bucket)" + (call.key.map { "/\($0)" } ?? ""), endpoint.authority)
        }
        let host = S3Endpoint(secure: endpoint.secure, host: "\(call.bucket).\(endpoint.host)", port: endpoint.port)
        return ("/" + (call.key ?? ""), host.authority)
    }

    func sendOnce(_ call: Call) async throws(S3Error) -> Answer {
        let (path, host) = target(call)
        let payloadHash =
            call.body.map { $0.withUnsafeReadableBytes { SigV4Signer.payloadHash($0) } }
            ?? SigV4Signer.emptyPayloadHash
        var headers = call.headers
        headers.append(("host", host))
        headers.append(("x-amz-content-sha256", payloadHash))
        let signature = signer.sign(
            SigV4Request(
                method: call.method.rawValue, path: path, query: call.query, headers: headers,
                payloadHash: payloadHash),
            at: Date())
        let query = SigV4Signer.canonicalQuery(call.query)
        // The path and query go out exactly as signed: every byte but the unreserved ones encoded.
        let scheme = configuration.endpoint.secure ? "https" : "http"
        var request = HTTPClientRequest(
            url: "\(scheme)://\(host)\(SigV4Signer.canonicalPath(path))" + (query.isEmpty ? "" : "?" + query))
        request.method = call.method
        for (name, value) in headers + signature.addedHeaders { request.headers.add(name: name, value: value) }
        request.headers.add(name: "authorization", value: signature.authorization)
        if let body = call.body {
            request.body = .bytes(body)
        } else if call.method == .PUT || call.method == .POST {
            request.headers.add(name: "content-length", value: "0")
        }

        let response: HTTPClientResponse
        let bytes: ByteBuffer
        let status: Int
        do {
            response = try await http.execute(
                request, deadline: .now() + TimeAmount(configuration.requestTimeout), logger: logger)
            status = Int(response.status.code)
            // An error document is small whatever was asked (a 10-byte range may fail with 300 bytes).
            let success = (200..<300).contains(status)
            bytes = try await response.body.collect(upTo: success ? call.maxResponseBytes : Self.maxErrorBytes)
        } catch {
            throw transportError(error, call)
        }
        guard (200..<300).contains(status) else {
            throw errorAnswer(status: status, headers: response.headers, body: bytes, call)
        }
        return Answer(status: status, headers: response.headers, body: bytes)
    }

    /// The most bytes kept of an error answer.
    static let maxErrorBytes = 64 << 10

    /// The error an error answer carries: its XML `<Error>` when there is one (HEAD has none).
    func errorAnswer(status: Int, headers: HTTPHeaders, body: ByteBuffer, _ call: Call) -> S3Error {
        let xml = XMLTree.parse(Array(body.readableBytesView))
        let root = xml?.name == "Error" ? xml : nil
        let code = root?.text("Code")
        let message =
            root?.text("Message")
            ?? HTTPResponseStatus(statusCode: status).reasonPhrase
        return S3Error(
            kind: S3Error.kind(status: status, code: code), operation: call.operation, resource: call.resource,
            status: status, code: code, message: message,
            requestID: root?.text("RequestId") ?? headers.first(name: "x-amz-request-id"))
    }

    /// A failure before an answer: no connection, a timeout, a connection lost on the way.
    func transportError(_ error: any Error, _ call: Call) -> S3Error {
        let endpoint = configuration.endpoint.description
        func make(_ kind: S3Error.Kind, _ message: String) -> S3Error {
            S3Error(kind: kind, operation: call.operation, resource: call.resource, message: message)
        }
        let connect = S3Client.describe(configuration.connectTimeout)
        switch error {
        case let e as HTTPClientError:
            switch e {
            case .connectTimeout, .getConnectionFromPoolTimeout:
                return make(.unreachable, "no connection to \(endpoint) within \(connect)")
            case .readTimeout:
                return make(.timeout, "\(endpoint) sent nothing for \(S3Client.describe(configuration.readTimeout))")
            case .deadlineExceeded:
                return make(
                    .timeout,
                    "no complete answer from \(endpoint) within \(S3Client.describe(configuration.requestTimeout))")
            case .cancelled:
                return make(.other, "cancelled")
            default:
                return make(.unavailable, "connection to \(endpoint) lost: \(e)")
            }
        case is NIOTooManyBytesError:
            return make(.invalidResponse, "the answer is longer than the \(call.maxResponseBytes) bytes expected")
        case let e as NIOConnectionError:
            let reason = e.connectionErrors.first.map { S3Client.reason($0.error) } ?? "\(e)"
            return make(.unreachable, "cannot connect to \(endpoint) within \(connect): \(reason)")
        case let e as IOError where [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL].contains(e.errnoCode):
            return make(.unreachable, "cannot connect to \(endpoint) within \(connect): \(S3Client.reason(e))")
        case let e as SocketAddressError:
            return make(.unreachable, "cannot resolve \(endpoint): \(e)")
        case let e as NIOSSLError:
            return make(.unreachable, "TLS with \(endpoint) failed: \(S3Client.tlsReason(e))")
        case let e as ChannelError:
            if case .connectTimeout = e { return make(.unreachable, "no connection to \(endpoint) within \(connect)") }
            return make(.unavailable, "connection to \(endpoint) lost: \(e)")
        case is CancellationError:
            return make(.other, "cancelled")
        default:
            return make(.unavailable, "connection to \(endpoint) lost: \(error)")
        }
    }
}

import Foundation

/// How to reach an S3-compatible object store, read from the standard AWS environment:
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (else
/// `AWS_DEFAULT_REGION`, else `us-east-1`), `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (a non-AWS
/// endpoint: path-style addressing then) and `AWS_CA_BUNDLE` (a PEM file of the CAs trusted for the endpoint).
///
/// Its `description` names the endpoint, region and access key id, never the secret.
public struct S3Configuration: Sendable, CustomStringConvertible {
    /// The credentials that sign every request.
    public var credentials: S3Credentials
    /// The signing region.
    public var region: String
    /// Where requests go.
    public var endpoint: S3Endpoint
    /// Whether the bucket is the first path segment (`http://host/bucket/key`, what SeaweedFS, MinIO
    /// and Ceph want) rather than a host name (`https://bucket.s3.region.amazonaws.com/key`).
    public var pathStyle: Bool
    /// A PEM file of the CAs trusted for the endpoint instead of the system's.
    public var caBundlePath: String?
    /// How long to wait for a connection (the pool retries refused connections within it).
    public var connectTimeout: Duration = Self.defaultConnectTimeout
    /// How long to wait for the next bytes of an answer.
    public var readTimeout: Duration = Self.defaultReadTimeout
    /// How long one attempt of a request may take in all, body included.
    public var requestTimeout: Duration = Self.defaultRequestTimeout
    /// How often a request that may be repeated is tried at most (1 = no retry).
    public var maxAttempts: Int = Self.defaultMaxAttempts
    /// The first backoff before a retry; each next one doubles, up to `maxBackoff`, with full jitter.
    public var baseBackoff: Duration = Self.defaultBaseBackoff
    /// The longest backoff between two attempts.
    public var maxBackoff: Duration = Self.defaultMaxBackoff
    /// Connections kept per host: concurrent requests beyond it wait for one.
    public var maxConnections: Int = Self.defaultMaxConnections

    /// A connection comes within this or the endpoint is taken as unreachable.
    public static let defaultConnectTimeout: Duration = .seconds(5)
    /// An answer that stalls this long is dropped.
    public static let defaultReadTimeout: Duration = .seconds(30)
    /// One attempt's bound: a 64 MiB part at 1 MB/s fits.
    public static let defaultRequestTimeout: Duration = .seconds(120)
    /// Four attempts: a retry storm stays bounded, a passing hiccup is absorbed.
    public static let defaultMaxAttempts = 4
    /// 100 ms, then 200, 400… (full jitter).
    public static let defaultBaseBackoff: Duration = .milliseconds(100)
    /// Backoffs stop growing at 5 s.
    public static let defaultMaxBackoff: Duration = .seconds(5)
    /// As many connections per host as a tile server's concurrent cold reads want.
    public static let defaultMaxConnections = 64
    /// The region when none is set.
    public static let defaultRegion = "us-east-1"

    /// A configuration with the default timeouts and retries; without `endpoint`, AWS's regional
    /// one with virtual-hosted addressing, with one, path-style addressing unless `pathStyle` says.
    public init(
        credentials: S3Credentials, region: String = Self.defaultRegion, endpoint: S3Endpoint? = nil,
        pathStyle: Bool? = nil, caBundlePath: String? = nil
    ) {
        self.credentials = credentials
        self.region = region
        self.endpoint = endpoint ?? .aws(region: region)
        self.pathStyle = pathStyle ?? (endpoint != nil)
        self.caBundlePath = caBundlePath
    }

    /// The configuration the AWS environment variables describe.
    public init(environment: [String: String]) throws(S3ConfigurationError) {
        func value(_ name: String) -> String? {
            guard let v = environment[name]?.trimmingCharacters(in: .whitespaces), !v.isEmpty else { return nil }
            return v
        }
        guard let keyID = value("AWS_ACCESS_KEY_ID"), let secret = value("AWS_SECRET_ACCESS_KEY") else {
            let missing = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].filter { value($0) == nil }
            throw S3ConfigurationError("no credentials: set \(missing.joined(separator: " and "))")
        }
        let region = value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? Self.defaultRegion
        var endpoint: S3Endpoint?
        // The AWS SDKs' service-specific variable wins over the general one.
        for name in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
            if let url = value(name) {
                endpoint = try S3Endpoint(parsing: url, variable: name)
                break
            }
        }
        let bundle = value("AWS_CA_BUNDLE")
        if let bundle, !FileManager.default.isReadableFile(atPath: bundle) {
            throw S3ConfigurationError("AWS_CA_BUNDLE '\(bundle)' is not a readable file")
        }
        self.init(
            credentials: S3Credentials(
                accessKeyID: keyID, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN")),
            region: region, endpoint: endpoint, caBundlePath: bundle)
    }

    /// The endpoint, addressing, region and access key id; never the secret.
    public var description: String {
        "S3 at \(endpoint) (\(pathStyle ? "path-style" : "virtual-hosted"), region \(region), \(credentials)"
            + (caBundlePath.map { ", CAs from \($0)" } ?? "") + ")"
    }
}

/// The scheme, host and port requests go to.
public struct S3Endpoint: Sendable, Hashable, CustomStringConvertible {
    /// Whether requests use TLS.
    public var secure: Bool
    /// The host name or address.
    public var host: String
    /// The port, nil for the scheme's default.
    public var port: Int?

    /// An endpoint; `port` nil for the scheme's default.
    public init(secure: Bool, host: String, port: Int? = nil) {
        self.secure = secure
        self.host = host
        self.port = port
    }

    /// AWS's regional endpoint.
    public static func aws(region: String) -> S3Endpoint {
        S3Endpoint(secure: true, host: "s3.\(region).amazonaws.com")
    }

    /// Parses `http://host:port` or `https://host` (a trailing `/` allowed, nothing else after it);
    /// `variable` names where it came from in errors.
    public init(parsing text: String, variable: String = "AWS_ENDPOINT_URL") throws(S3ConfigurationError) {
        let problem = S3ConfigurationError(
            "\(variable) '\(text)' is not an http:// or https:// URL of a host (and port)")
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else { throw problem }
        guard components.path.isEmpty || components.path == "/", components.query == nil,
            components.fragment == nil, components.user == nil
        else {
            throw S3ConfigurationError("\(variable) '\(text)' must name a host and port only, without a path")
        }
        self.init(secure: scheme == "https", host: host, port: components.port)
    }

    /// `host` or `host:port`, as the `Host` header carries it.
    public var authority: String {
        let bracketed = host.contains(":") ? "[\(host)]" : host
        guard let port, port != (secure ? 443 : 80) else { return bracketed }
        return "\(bracketed):\(port)"
    }

    /// `https://host` or `http://host:port`.
    public var description: String { "\(secure ? "https" : "http")://\(authority)" }
}

/// An S3 configuration that cannot work, and why, in one line.
public struct S3ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, for a person.
    public var description: String

    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

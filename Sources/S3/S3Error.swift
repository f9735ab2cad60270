/// A request to the object store that failed, with what S3 said: its error code and message, the
/// HTTP status, the operation and the object. Its `description` is one line for a person.
public struct S3Error: Error, Sendable, CustomStringConvertible {
    /// What kind of failure, for a caller deciding what to do.
    public enum Kind: String, Sendable, Hashable {
        /// No such object (`NoSuchKey`, or a 404 to a HEAD).
        case notFound
        /// No such bucket.
        case noSuchBucket
        /// The credentials are known but may not do this (`AccessDenied`).
        case accessDenied
        /// The credentials are wrong: unknown key id, wrong secret, expired or malformed token.
        case invalidCredentials
        /// A condition of the request did not hold (`If-None-Match: *` on an existing object).
        case preconditionFailed
        /// The store is overloaded or failing (`SlowDown`, 503, any 5xx): maybe later.
        case unavailable
        /// No connection could be made (refused, no route, name unknown, TLS refused).
        case unreachable
        /// The store did not answer in time.
        case timeout
        /// An answer that is not what S3 answers (a body that does not parse, a missing header).
        case invalidResponse
        /// Anything else S3 refused (`InvalidRange`, `EntityTooSmall`, `NoSuchUpload`…).
        case other
    }

    /// The kind of failure.
    public var kind: Kind
    /// The operation (`GET`, `PUT`, `ListObjectsV2`…).
    public var operation: String
    /// The object or bucket as `s3://bucket/key`.
    public var resource: String
    /// The HTTP status, nil when no answer came.
    public var status: Int?
    /// S3's error code (`NoSuchKey`, `SignatureDoesNotMatch`…), nil when none came.
    public var code: String?
    /// S3's message, or what went wrong on the way.
    public var message: String
    /// S3's request id, for the store's operators.
    public var requestID: String?

    /// An error of `kind` on `resource`, with what S3 said when it said something.
    public init(
        kind: Kind, operation: String, resource: String, status: Int? = nil, code: String? = nil,
        message: String, requestID: String? = nil
    ) {
        self.kind = kind
        self.operation = operation
        self.resource = resource
        self.status = status
        self.code = code
        self.message = message
        self.requestID = requestID
    }

    /// `S3 GET s3://bucket/key: NoSuchBucket (404): The specified bucket does not exist`.
    public var description: String {
        var what: [String] = []
        if let code { what.append(code) }
        if let status { what.append("(\(status))") }
        let head = what.isEmpty ? "" : what.joined(separator: " ") + ": "
        let oneLine = message.split(whereSeparator: \.isNewline).joined(separator: " ")
        return "S3 \(operation) \(resource): \(head)\(oneLine)"
    }

    /// The kind of an error answer from its status and S3 code.
    static func kind(status: Int, code: String?) -> Kind {
        switch code {
        case "NoSuchKey": return .notFound
        case "NoSuchBucket": return .noSuchBucket
        case "AccessDenied", "AllAccessDisabled", "AccountProblem": return .accessDenied
        case "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
            "InvalidSecurity", "MissingSecurityHeader":
            return .invalidCredentials
        case "PreconditionFailed", "ConditionalRequestConflict": return .preconditionFailed
        case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout": return .unavailable
        default: break
        }
        switch status {
        case 404: return .notFound
        case 403: return .accessDenied
        case 412: return .preconditionFailed
        case 429, 500...599: return .unavailable
        default: return .other
        }
    }
}

import Coverage
import NIOCore
import Pyramid
import Render
import S3

/// Every error the serving core answers with, said as a kind — what went wrong for the client —
/// never as a status number: the server turns kinds into statuses and bodies in one place per
/// response style (OWS `ExceptionReport`, WMS `ServiceExceptionReport`, JSON).
public struct ServingError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable {
        /// The request is malformed or names something it may not (a parameter out of its range).
        case badInput
        case notFound
        case methodNotAllowed
        /// No credentials, or credentials that are not valid.
        case unauthorized
        /// Valid credentials that do not allow this.
        case forbidden
        /// The resource is not in a state that allows this (a name taken, a job not finished).
        case conflict
        /// The request or its result is larger than the service accepts.
        case tooLarge
        /// Well-formed, but it breaks a rule (a status change, an area outside the coverage).
        case unprocessable
        /// The client has reached its share (queued extracts, kept bytes).
        case tooMany
        case notImplemented
        /// The service cannot answer now (files, database); trying again later may work.
        case unavailable
        /// No room left to write the result.
        case insufficientStorage
        /// The request timed out before it was complete.
        case timedOut
        /// The client closed the connection before the answer was ready.
        case clientGone
        /// A fault of the service itself.
        case `internal`
    }

    /// OGC exception codes (OWS Common 1.1, WMTS 1.0 §8, WMS 1.3.0 Annex A): what OGC clients read
    /// in `exceptionCode`, finer than the kind.
    public enum OGCCode: String, Sendable {
        case missingParameterValue = "MissingParameterValue"
        case invalidParameterValue = "InvalidParameterValue"
        case operationNotSupported = "OperationNotSupported"
        case tileOutOfRange = "TileOutOfRange"
        case layerNotDefined = "LayerNotDefined"
        case styleNotDefined = "StyleNotDefined"
        case invalidFormat = "InvalidFormat"
        case invalidCRS = "InvalidCRS"
        case invalidPoint = "InvalidPoint"
        /// WMS 1.3.0: a dimension (TIME) value the layer does not have.
        case invalidDimensionValue = "InvalidDimensionValue"
        case noApplicableCode = "NoApplicableCode"

        /// The kind an OGC code implies.
        var kind: Kind {
            switch self {
            case .operationNotSupported: .notImplemented
            case .noApplicableCode: .internal
            default: .badInput
            }
        }
    }

    public var kind: Kind
    public var message: String
    /// The parameter at fault (OGC `locator`, JSON `parameter`).
    public var locator: String?
    /// The OGC code when the kind alone does not say it.
    public var ogcCode: OGCCode?

    public init(_ kind: Kind, locator: String? = nil, _ message: String) {
        self.kind = kind
        self.message = message
        self.locator = locator
    }

    /// An error OGC clients read by its code; its kind follows from the code.
    public init(_ code: OGCCode, locator: String? = nil, _ message: String) {
        self.init(code.kind, locator: locator, message)
        ogcCode = code
    }

    public var description: String { message }

    /// The OGC exception code (also the JSON `error`): the one given, else the kind's name, as
    /// the API has always spelt it.
    public var exceptionCode: String {
        if let ogcCode { return ogcCode.rawValue }
        return switch kind {
        case .badInput: OGCCode.invalidParameterValue.rawValue
        case .notFound: "NotFound"
        case .methodNotAllowed: "MethodNotAllowed"
        case .unauthorized: "Unauthorized"
        case .forbidden: "Forbidden"
        case .conflict: "Conflict"
        case .tooLarge: "TooLarge"
        case .unprocessable: "ValidationFailed"
        case .tooMany: "TooManyRequests"
        case .notImplemented: OGCCode.operationNotSupported.rawValue
        case .unavailable: "Unavailable"
        case .insufficientStorage: "InsufficientStorage"
        case .timedOut: "RequestTimeout"
        case .clientGone: "ClientGone"
        case .internal: OGCCode.noApplicableCode.rawValue
        }
    }
}

extension ServingError {
    /// A coverage rule error, the same kind on every route group.
    public init(_ e: CoverageError) {
        let kind: Kind =
            switch e.kind {
            case .invalid: .unprocessable
            case .malformed: .badInput
            case .notFound: .notFound
            case .conflict: .conflict
            case .unauthorized: .unauthorized
            case .forbidden: .forbidden
            case .unavailable: .unavailable
            case .insufficientStorage: .insufficientStorage
            }
        self.init(kind, e.message)
    }

    /// An extract that cannot be planned or written.
    public init(_ e: ExtractError) {
        let kind: Kind =
            switch e.kind {
            case .badInput: .badInput
            case .tooLarge: .tooLarge
            case .forbidden: .forbidden
            case .unprocessable: .unprocessable
            case .cancelled: .clientGone
            }
        self.init(kind, locator: e.parameter, e.message)
    }

    /// A shard that cannot be read: for now (no file descriptor left, the object store does not
    /// answer) or until it changes.
    public init(_ e: ShardError) {
        self =
            e.transient
            ? ServingError(.unavailable, "the tile cannot be read now; try again")
            : ServingError(.internal, "the shard holding this tile cannot be read")
    }

    /// Any error met while answering, as the kind it is; an unknown one is internal with a
    /// generic message (`what` says what failed; the details go to the log, not the client).
    public static func from(_ error: any Error, what: String) -> ServingError {
        switch error {
        case let e as ServingError: e
        case let e as CoverageError: ServingError(e)
        case let e as ExtractError: ServingError(e)
        case let e as ShardError: ServingError(e)
        case let e as S3Error: ServingError(e, what: what)
        case let e as NIOTooManyBytesError:
            ServingError(
                .tooLarge, "the request body exceeds \(e.maxBytes.map { "\($0 >> 20) MB" } ?? "what this route takes")")
        default: ServingError(.internal, what)
        }
    }

    /// The object store failing to answer (down, overloaded, too slow, answering garbage) is
    /// `.unavailable`: trying again may work. What it refuses for good (credentials, bucket) is a
    /// fault of the server's settings: internal. Never the bucket or key: they go to the log.
    init(_ e: S3Error, what: String) {
        switch e.kind {
        case .unavailable, .unreachable, .timeout, .invalidResponse:
            self.init(.unavailable, "the object store holding the data does not answer now; try again")
        case .notFound: self.init(.notFound, "no such object in the store")
        case .noSuchBucket, .accessDenied, .invalidCredentials, .preconditionFailed, .other:
            self.init(.internal, what)
        }
    }
}

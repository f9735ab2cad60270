import Foundation
import Hummingbird
import Metrics
import Raster

/// Drops the body of HEAD responses, keeping their length (routes answer HEAD as GET).
struct HeadMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard request.method == .head else { return try await next(request, context) }
        let response = try await next(request, context)
        var headers = response.headers
        if headers[.contentLength] == nil, let length = response.body.contentLength {
            headers[.contentLength] = String(length)
        }
        return Response(status: response.status, headers: headers, body: .init())
    }
}

/// XML and JSON documents, gzipped when the client accepts it (tiles are compressed already).
enum Document {
    static let bytesSent = Counter(label: "dallage_http_response_bytes_total")

    static func response(
        _ bytes: [UInt8], contentType: String, request: Request, cacheControl: String = "public, max-age=60"
    ) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = cacheControl
        headers[.vary] = "Accept-Encoding"
        var body = bytes
        if (request.headers[.acceptEncoding] ?? "").contains("gzip"), bytes.count > 512,
            let gz = try? bytes.withUnsafeBytes({ try Deflate.gzip($0) })
        {
            headers[.contentEncoding] = "gzip"
            body = gz
        }
        bytesSent.increment(by: Int64(body.count))
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    static func json(_ object: Any, request: Request, contentType: String = "application/json") throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return response(Array(data), contentType: contentType, request: request)
    }
}

extension Router {
    /// Registers `handler` for GET and HEAD.
    @discardableResult
    func getOrHead(
        _ path: RouterPath, use handler: @escaping @Sendable (Request, Context) async throws -> some ResponseGenerator
    ) -> Self {
        on(path, method: .get, use: handler)
        on(path, method: .head, use: handler)
        return self
    }
}

/// Runs blocking work (rendering, writing an extract) on a Dispatch thread, so the cooperative
/// threads that serve tiles are never held by it.
func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global(qos: .userInitiated).async { c.resume(with: Result { try body() }) }
    }
}

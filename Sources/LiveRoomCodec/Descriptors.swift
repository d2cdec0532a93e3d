import CProtobufC

/// A protobuf-c message descriptor. The pointer refers to static C data, so sharing it is safe.
public struct MessageDescriptor: @unchecked Sendable, Hashable {
    public let pointer: UnsafePointer<ProtobufCMessageDescriptor>

    public init(_ pointer: UnsafePointer<ProtobufCMessageDescriptor>) {
        self.pointer = pointer
    }

    /// The full proto name, e.g. `liveroom.v1.Room`.
    public var fullName: String { String(cString: pointer.pointee.name) }
    public var shortName: String { String(cString: pointer.pointee.short_name) }
    public var packageName: String { String(cString: pointer.pointee.package_name) }
    public var fieldCount: Int { Int(pointer.pointee.n_fields) }

    public func field(_ index: Int) -> FieldDescriptor {
        precondition(index >= 0 && index < fieldCount, "field index \(index) out of range for \(fullName)")
        return FieldDescriptor(pointer.pointee.fields + index)
    }

    public var fields: [FieldDescriptor] { (0..<fieldCount).map(field) }

    /// Looks a field up by its proto name or its lowerCamelCase JSON name.
    public func fieldIndex(named name: String) -> Int? {
        for i in 0..<fieldCount {
            let f = field(i)
            if f.name == name || f.jsonName == name { return i }
        }
        return nil
    }
}

/// The kinds of field protobuf-c knows.
public enum FieldType: Sendable, Hashable {
    case int32, sint32, sfixed32, int64, sint64, sfixed64, uint32, fixed32, uint64, fixed64
    case float, double, bool, enumeration, string, bytes, message

    init(_ raw: ProtobufCType) {
        switch raw {
        case PROTOBUF_C_TYPE_INT32: self = .int32
        case PROTOBUF_C_TYPE_SINT32: self = .sint32
        case PROTOBUF_C_TYPE_SFIXED32: self = .sfixed32
        case PROTOBUF_C_TYPE_INT64: self = .int64
        case PROTOBUF_C_TYPE_SINT64: self = .sint64
        case PROTOBUF_C_TYPE_SFIXED64: self = .sfixed64
        case PROTOBUF_C_TYPE_UINT32: self = .uint32
        case PROTOBUF_C_TYPE_FIXED32: self = .fixed32
        case PROTOBUF_C_TYPE_UINT64: self = .uint64
        case PROTOBUF_C_TYPE_FIXED64: self = .fixed64
        case PROTOBUF_C_TYPE_FLOAT: self = .float
        case PROTOBUF_C_TYPE_DOUBLE: self = .double
        case PROTOBUF_C_TYPE_BOOL: self = .bool
        case PROTOBUF_C_TYPE_ENUM: self = .enumeration
        case PROTOBUF_C_TYPE_STRING: self = .string
        case PROTOBUF_C_TYPE_BYTES: self = .bytes
        default: self = .message
        }
    }

    /// The size of one value in the C struct (or in a repeated field's array).
    var cSize: Int {
        switch self {
        case .int32, .sint32, .sfixed32, .uint32, .fixed32, .float, .enumeration: return 4
        case .bool: return MemoryLayout<protobuf_c_boolean>.size
        case .int64, .sint64, .sfixed64, .uint64, .fixed64, .double: return 8
        case .string, .message: return MemoryLayout<UnsafeRawPointer>.size
        case .bytes: return MemoryLayout<ProtobufCBinaryData>.size
        }
    }

    /// The name as written in a .proto file.
    public var protoName: String {
        switch self {
        case .enumeration: return "enum"
        default: return "\(self)"
        }
    }
}

/// One field of a message descriptor.
public struct FieldDescriptor: @unchecked Sendable {
    public let pointer: UnsafePointer<ProtobufCFieldDescriptor>

    init(_ pointer: UnsafePointer<ProtobufCFieldDescriptor>) { self.pointer = pointer }

    public var name: String { String(cString: pointer.pointee.name) }
    public var number: UInt32 { pointer.pointee.id }
    public var type: FieldType { FieldType(pointer.pointee.type) }
    public var isRepeated: Bool { pointer.pointee.label == PROTOBUF_C_LABEL_REPEATED }
    public var isOneofMember: Bool { pointer.pointee.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0 }
    /// proto2 `optional` / proto3 explicit presence: a `has_` flag in the C struct (scalars only).
    var hasPresenceFlag: Bool {
        pointer.pointee.label == PROTOBUF_C_LABEL_OPTIONAL && !isOneofMember
            && type != .string && type != .message
    }
    var offset: Int { Int(pointer.pointee.offset) }
    var quantifierOffset: Int { Int(pointer.pointee.quantifier_offset) }

    public var jsonName: String { lowerCamelCase(name) }

    public var messageType: MessageDescriptor? {
        guard type == .message, let d = pointer.pointee.descriptor else { return nil }
        return MessageDescriptor(d.assumingMemoryBound(to: ProtobufCMessageDescriptor.self))
    }

    public var enumType: EnumDescriptor? {
        guard type == .enumeration, let d = pointer.pointee.descriptor else { return nil }
        return EnumDescriptor(d.assumingMemoryBound(to: ProtobufCEnumDescriptor.self))
    }
}

/// A protobuf-c enum descriptor.
public struct EnumDescriptor: @unchecked Sendable, Hashable {
    public let pointer: UnsafePointer<ProtobufCEnumDescriptor>

    public init(_ pointer: UnsafePointer<ProtobufCEnumDescriptor>) { self.pointer = pointer }

    public var fullName: String { String(cString: pointer.pointee.name) }
    public var shortName: String { String(cString: pointer.pointee.short_name) }

    /// (proto name, number) for every value, in declaration order.
    public var values: [(name: String, number: Int32)] {
        (0..<Int(pointer.pointee.n_values)).map { i in
            let v = pointer.pointee.values[i]
            return (String(cString: v.name), v.value)
        }
    }

    public func name(of number: Int32) -> String? { values.first { $0.number == number }?.name }
    public func number(of name: String) -> Int32? { values.first { $0.name == name }?.number }
}

/// snake_case to lowerCamelCase, as protobuf's JSON mapping names fields.
public func lowerCamelCase(_ s: String) -> String {
    var out = ""
    var upper = false
    for c in s {
        if c == "_" { upper = true; continue }
        out.append(upper ? Character(c.uppercased()) : c)
        upper = false
    }
    return out
}

/// All descriptors of a set of proto files, found by full name.
public struct DescriptorPool: Sendable {
    public let messages: [String: MessageDescriptor]
    public let enums: [String: EnumDescriptor]

    public init(messages: [MessageDescriptor], enums: [EnumDescriptor]) {
        self.messages = Dictionary(messages.map { ($0.fullName, $0) }, uniquingKeysWith: { a, _ in a })
        self.enums = Dictionary(enums.map { ($0.fullName, $0) }, uniquingKeysWith: { a, _ in a })
    }

    public func message(named name: String) -> MessageDescriptor? {
        messages[name.hasPrefix(".") ? String(name.dropFirst()) : name]
    }
}

/// How the messages of a call flow.
public enum RPCKind: String, Sendable, Hashable, CaseIterable {
    case unary, clientStreaming = "client-streaming", serverStreaming = "server-streaming", bidirectional
}

/// One method of a service, as declared in a .proto file.
public struct MethodInfo: Sendable, Hashable {
    public let service: String  // full service name
    public let name: String
    public let kind: RPCKind
    public let inputType: String  // full message names
    public let outputType: String

    public init(service: String, name: String, kind: RPCKind, inputType: String, outputType: String) {
        self.service = service
        self.name = name
        self.kind = kind
        self.inputType = inputType
        self.outputType = outputType
    }

    /// The path used on the wire: `/package.Service/Method`.
    public var path: String { "/\(service)/\(name)" }
}

/// A method with its request and response types, for typed clients and servers.
public struct ProtoMethod<Input: ProtoMessage, Output: ProtoMessage>: Sendable, Hashable {
    public let info: MethodInfo
    public init(_ info: MethodInfo) { self.info = info }
}

//! SOAP 1.1 envelopes of the financial transactions service, parsed with `quick-xml`.
//!
//! The service has one operation, `ProcessPayment`, in namespace `urn:market:payments`:
//!
//! ```xml
//! <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
//!   <soap:Body>
//!     <p:ProcessPayment xmlns:p="urn:market:payments">
//!       <p:Name>Ada</p:Name><p:CardNumber>4111111111111111</p:CardNumber>
//!       <p:Expiry>12/30</p:Expiry><p:SecurityCode>123</p:SecurityCode>
//!       <p:AmountCents>2500</p:AmountCents>
//!     </p:ProcessPayment>
//!   </soap:Body>
//! </soap:Envelope>
//! ```
//!
//! answered by `ProcessPaymentResponse{Approved, TransactionId}`. Anything else — not XML, no
//! SOAP envelope, an unknown operation, a missing or malformed field — is a [`SoapError`] that
//! the server turns into a SOAP `Fault`. The parser walks events with namespace resolution, so
//! prefixes are free and only namespaces matter; it never panics on hostile input, and nesting
//! depth and field sizes are bounded.

use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;

/// The SOAP 1.1 envelope namespace.
pub const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The payment service's namespace.
pub const PAYMENTS_NS: &str = "urn:market:payments";
/// The SOAPAction of the one operation.
pub const PROCESS_PAYMENT_ACTION: &str = "ProcessPayment";

const DEPTH_MAX: usize = 16;
const FIELD_CHARS_MAX: usize = 256;
const TEXT_CHARS_MAX: usize = 4096;

/// A `ProcessPayment` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPayment {
    /// Card holder name.
    pub name: String,
    /// Card number (digits).
    pub card_number: String,
    /// Expiry, `MM/YY`.
    pub expiry: String,
    /// Card security code.
    pub security_code: String,
    /// Amount to charge, in cents.
    pub amount_cents: u64,
}

/// A `ProcessPaymentResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPaymentResponse {
    /// Whether the payment was approved.
    pub approved: bool,
    /// The service's id for this transaction.
    pub transaction_id: String,
}

/// Why an envelope was refused; becomes a SOAP Fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// Not well-formed XML.
    #[error("malformed XML: {0}")]
    Xml(String),
    /// Well-formed, but not a SOAP 1.1 envelope with a body.
    #[error("not a SOAP 1.1 envelope: {0}")]
    NotEnvelope(String),
    /// The body holds an operation this service does not offer.
    #[error("unknown operation {0}")]
    UnknownOperation(String),
    /// A required field is missing or invalid.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field's element name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A SOAP Fault received by a client.
    #[error("SOAP fault {code}: {message}")]
    Fault {
        /// faultcode.
        code: String,
        /// faultstring.
        message: String,
    },
}

impl SoapError {
    /// The SOAP 1.1 faultcode: `Client` for what the sender got wrong.
    pub fn fault_code(&self) -> &'static str {
        match self {
            SoapError::Fault { .. } => "soap:Server",
            _ => "soap:Client",
        }
    }
}

/// A flattened view of one element's children: `(namespace, local name, text)`.
struct Element {
    ns: Option<String>,
    name: String,
    children: Vec<Element>,
    text: String,
}

/// Parses a whole document into a small tree, bounded in depth and text size.
fn parse_tree(xml: &str) -> Result<Element, SoapError> {
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let (res, event) = reader
            .read_resolved_event()
            .map_err(|e| SoapError::Xml(e.to_string()))?;
        let ns = match &res {
            ResolveResult::Bound(Namespace(n)) => Some(String::from_utf8_lossy(n).into_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => {
                return Err(SoapError::Xml(format!(
                    "unknown prefix {}",
                    String::from_utf8_lossy(p)
                )))
            }
        };
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(SoapError::Xml("content after the root element".into()));
            }
            Event::Start(e) => {
                if stack.len() >= DEPTH_MAX {
                    return Err(SoapError::Xml("nesting too deep".into()));
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push(Element {
                    ns,
                    name,
                    children: Vec::new(),
                    text: String::new(),
                });
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let el = Element {
                    ns,
                    name,
                    children: Vec::new(),
                    text: String::new(),
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| SoapError::Xml("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| SoapError::Xml(e.to_string()))?;
                push_text(&mut stack, &s)?;
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| SoapError::Xml(e.to_string()))?;
                push_text(&mut stack, &s)?;
            }
            Event::GeneralRef(r) => {
                let s = if let Some(ch) = r
                    .resolve_char_ref()
                    .map_err(|e| SoapError::Xml(e.to_string()))?
                {
                    ch.to_string()
                } else {
                    let name = r.decode().map_err(|e| SoapError::Xml(e.to_string()))?;
                    resolve_predefined_entity(&name)
                        .ok_or_else(|| SoapError::Xml(format!("unknown entity &{name};")))?
                        .to_string()
                };
                push_text(&mut stack, &s)?;
            }
            Event::DocType(_) => return Err(SoapError::Xml("DTDs are not accepted".into())),
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(SoapError::Xml("unexpected end of document".into()));
    }
    root.ok_or_else(|| SoapError::Xml("empty document".into()))
}

fn push_text(stack: &mut [Element], s: &str) -> Result<(), SoapError> {
    match stack.last_mut() {
        Some(el) => {
            if el.text.len() + s.len() > TEXT_CHARS_MAX {
                return Err(SoapError::Xml("text too long".into()));
            }
            el.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None => Err(SoapError::Xml("text outside the root element".into())),
    }
}

/// Finds the single element inside `soap:Envelope/soap:Body`.
fn body_payload(xml: &str) -> Result<Element, SoapError> {
    let root = parse_tree(xml)?;
    if root.name != "Envelope" || root.ns.as_deref() != Some(SOAP_ENV_NS) {
        return Err(SoapError::NotEnvelope(format!(
            "root element is {}",
            root.name
        )));
    }
    let body = root
        .children
        .into_iter()
        .find(|c| c.name == "Body" && c.ns.as_deref() == Some(SOAP_ENV_NS))
        .ok_or_else(|| SoapError::NotEnvelope("no soap:Body".into()))?;
    let mut payload = body.children.into_iter();
    let first = payload
        .next()
        .ok_or_else(|| SoapError::NotEnvelope("empty soap:Body".into()))?;
    if payload.next().is_some() {
        return Err(SoapError::NotEnvelope(
            "more than one element in soap:Body".into(),
        ));
    }
    Ok(first)
}

fn field<'a>(el: &'a Element, name: &'static str) -> Result<&'a str, SoapError> {
    let mut found = el
        .children
        .iter()
        .filter(|c| c.name == name && c.ns.as_deref() == Some(PAYMENTS_NS));
    let f = found.next().ok_or(SoapError::InvalidField {
        field: name,
        reason: "missing".into(),
    })?;
    if found.next().is_some() {
        return Err(SoapError::InvalidField {
            field: name,
            reason: "repeated".into(),
        });
    }
    if !f.children.is_empty() {
        return Err(SoapError::InvalidField {
            field: name,
            reason: "must be text".into(),
        });
    }
    let value = f.text.trim();
    if value.chars().count() > FIELD_CHARS_MAX {
        return Err(SoapError::InvalidField {
            field: name,
            reason: format!("longer than {FIELD_CHARS_MAX} characters"),
        });
    }
    Ok(value)
}

/// Parses a `ProcessPayment` request envelope.
pub fn parse_request(xml: &str) -> Result<ProcessPayment, SoapError> {
    let op = body_payload(xml)?;
    if op.name != "ProcessPayment" || op.ns.as_deref() != Some(PAYMENTS_NS) {
        return Err(SoapError::UnknownOperation(op.name));
    }
    let amount = field(&op, "AmountCents")?;
    let amount_cents = amount.parse::<u64>().map_err(|_| SoapError::InvalidField {
        field: "AmountCents",
        reason: format!("{amount:?} is not a non-negative integer"),
    })?;
    Ok(ProcessPayment {
        name: field(&op, "Name")?.to_string(),
        card_number: field(&op, "CardNumber")?.to_string(),
        expiry: field(&op, "Expiry")?.to_string(),
        security_code: field(&op, "SecurityCode")?.to_string(),
        amount_cents,
    })
}

/// Parses a `ProcessPaymentResponse` envelope (or a Fault) — the client side.
pub fn parse_response(xml: &str) -> Result<ProcessPaymentResponse, SoapError> {
    let op = body_payload(xml)?;
    if op.name == "Fault" && op.ns.as_deref() == Some(SOAP_ENV_NS) {
        let text = |n: &str| {
            op.children
                .iter()
                .find(|c| c.name == n)
                .map(|c| c.text.trim().to_string())
                .unwrap_or_default()
        };
        return Err(SoapError::Fault {
            code: text("faultcode"),
            message: text("faultstring"),
        });
    }
    if op.name != "ProcessPaymentResponse" || op.ns.as_deref() != Some(PAYMENTS_NS) {
        return Err(SoapError::UnknownOperation(op.name));
    }
    let approved = match field(&op, "Approved")? {
        "true" | "1" => true,
        "false" | "0" => false,
        other => {
            return Err(SoapError::InvalidField {
                field: "Approved",
                reason: format!("{other:?} is not a boolean"),
            })
        }
    };
    Ok(ProcessPaymentResponse {
        approved,
        transaction_id: field(&op, "TransactionId")?.to_string(),
    })
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP_ENV_NS}\"><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

/// Renders a `ProcessPayment` request envelope.
pub fn render_request(req: &ProcessPayment) -> String {
    envelope(&format!(
        "<p:ProcessPayment xmlns:p=\"{PAYMENTS_NS}\"><p:Name>{}</p:Name><p:CardNumber>{}</p:CardNumber><p:Expiry>{}</p:Expiry><p:SecurityCode>{}</p:SecurityCode><p:AmountCents>{}</p:AmountCents></p:ProcessPayment>",
        escape(req.name.as_str()),
        escape(req.card_number.as_str()),
        escape(req.expiry.as_str()),
        escape(req.security_code.as_str()),
        req.amount_cents
    ))
}

/// Renders a `ProcessPaymentResponse` envelope.
pub fn render_response(resp: &ProcessPaymentResponse) -> String {
    envelope(&format!(
        "<p:ProcessPaymentResponse xmlns:p=\"{PAYMENTS_NS}\"><p:Approved>{}</p:Approved><p:TransactionId>{}</p:TransactionId></p:ProcessPaymentResponse>",
        resp.approved,
        escape(resp.transaction_id.as_str())
    ))
}

/// Renders a SOAP 1.1 Fault envelope for `err`.
pub fn render_fault(err: &SoapError) -> String {
    envelope(&format!(
        "<soap:Fault><faultcode>{}</faultcode><faultstring>{}</faultstring></soap:Fault>",
        err.fault_code(),
        escape(err.to_string().as_str())
    ))
}

/// The WSDL served at `GET /soap?wsdl`; `address` is the service's endpoint URL.
pub fn wsdl(address: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<definitions name="Payments" targetNamespace="{PAYMENTS_NS}"
  xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
  xmlns:tns="{PAYMENTS_NS}" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <types>
    <xsd:schema targetNamespace="{PAYMENTS_NS}" elementFormDefault="qualified">
      <xsd:element name="ProcessPayment">
        <xsd:complexType><xsd:sequence>
          <xsd:element name="Name" type="xsd:string"/>
          <xsd:element name="CardNumber" type="xsd:string"/>
          <xsd:element name="Expiry" type="xsd:string"/>
          <xsd:element name="SecurityCode" type="xsd:string"/>
          <xsd:element name="AmountCents" type="xsd:unsignedLong"/>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
      <xsd:element name="ProcessPaymentResponse">
        <xsd:complexType><xsd:sequence>
          <xsd:element name="Approved" type="xsd:boolean"/>
          <xsd:element name="TransactionId" type="xsd:string"/>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </types>
  <message name="ProcessPaymentInput"><part name="parameters" element="tns:ProcessPayment"/></message>
  <message name="ProcessPaymentOutput"><part name="parameters" element="tns:ProcessPaymentResponse"/></message>
  <portType name="PaymentsPortType">
    <operation name="ProcessPayment">
      <input message="tns:ProcessPaymentInput"/><output message="tns:ProcessPaymentOutput"/>
    </operation>
  </portType>
  <binding name="PaymentsBinding" type="tns:PaymentsPortType">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="ProcessPayment">
      <soap:operation soapAction="ProcessPayment"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output>
    </operation>
  </binding>
  <service name="PaymentsService">
    <port name="PaymentsPort" binding="tns:PaymentsBinding"><soap:address location="{}"/></port>
  </service>
</definitions>
"#,
        escape(address)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProcessPayment {
        ProcessPayment {
            name: "Ada <&> Lovelace".into(),
            card_number: "4111111111111111".into(),
            expiry: "12/30".into(),
            security_code: "123".into(),
            amount_cents: 2500,
        }
    }

    #[test]
    fn request_round_trips_with_escaping() {
        let xml = render_request(&sample());
        assert_eq!(parse_request(&xml).expect("parse"), sample());
    }

    #[test]
    fn response_and_fault_round_trip() {
        let resp = ProcessPaymentResponse {
            approved: true,
            transaction_id: "tx-1".into(),
        };
        assert_eq!(
            parse_response(&render_response(&resp)).expect("parse"),
            resp
        );
        let fault = render_fault(&SoapError::UnknownOperation("Refund".into()));
        match parse_response(&fault) {
            Err(SoapError::Fault { code, message }) => {
                assert_eq!(code, "soap:Client");
                assert!(message.contains("Refund"));
            }
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn prefixes_do_not_matter_namespaces_do() {
        let xml = format!(
            "<e:Envelope xmlns:e='{SOAP_ENV_NS}'><e:Body><ProcessPayment xmlns='{PAYMENTS_NS}'><Name>A</Name><CardNumber>1</CardNumber><Expiry>01/30</Expiry><SecurityCode>1</SecurityCode><AmountCents>5</AmountCents></ProcessPayment></e:Body></e:Envelope>"
        );
        assert_eq!(parse_request(&xml).expect("parse").amount_cents, 5);
        let wrong_ns = xml.replace(PAYMENTS_NS, "urn:other");
        assert!(matches!(
            parse_request(&wrong_ns),
            Err(SoapError::UnknownOperation(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases = [
            "",
            "garbage",
            "<a>",
            "</a>",
            "<a></b>",
            "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x/>",
            "<Envelope/>",
            &format!("<s:Envelope xmlns:s='{SOAP_ENV_NS}'/>"),
            &format!("<s:Envelope xmlns:s='{SOAP_ENV_NS}'><s:Body/></s:Envelope>"),
            &format!("<s:Envelope xmlns:s='{SOAP_ENV_NS}'><s:Body><x:Refund xmlns:x='{PAYMENTS_NS}'/></s:Body></s:Envelope>"),
            "<x:a>unbound prefix</x:a>",
            "<a>&bogus;</a>",
        ];
        for case in cases {
            assert!(parse_request(case).is_err(), "accepted {case:?}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse_request(&deep).is_err());
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let xml = render_request(&sample());
        let no_name = xml.replace("<p:Name>Ada &lt;&amp;&gt; Lovelace</p:Name>", "");
        assert_eq!(
            parse_request(&no_name),
            Err(SoapError::InvalidField {
                field: "Name",
                reason: "missing".into()
            })
        );
        let bad_amount = xml.replace("<p:AmountCents>2500<", "<p:AmountCents>-3<");
        assert!(matches!(
            parse_request(&bad_amount),
            Err(SoapError::InvalidField {
                field: "AmountCents",
                ..
            })
        ));
    }
}

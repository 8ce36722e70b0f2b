"""athenahealth clients: auth, HTTP policy, FHIR bulk export, Data View, subscriptions."""

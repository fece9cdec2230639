<%-- e-cology login page (demo), release 20230101 --%>
<html><body>login</body></html>
